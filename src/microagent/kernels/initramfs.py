"""The guest initramfs: a deterministic cpio ``newc`` archive.

Owns the archive format (written in pure Python; no ``cpio`` tool) and the
layout microagent boots with::

    /init                    guest init (microagent-init), 0755
    /microagent-initramfs    empty marker: guest init knows it runs from the initramfs
    /modules/NN-<name>.ko    kernel modules; sorted names = load order
    /modules/conditions      "NN-<name>.ko ID..." per module needed only for some
                             virtio devices (hex IDs); guest init loads the
                             others first, then these when the VM has such a device
    /dev /proc /sys /newroot directories
    /dev/console             char device 5,1

Output is byte-identical for identical inputs: entries are sorted by path,
inode numbers are assigned sequentially, mtimes are fixed, owners are 0.

``newc`` format: each entry is a 110-byte ASCII header (magic ``070701`` and
thirteen 8-digit hex fields), the NUL-terminated name padded so header+name
is a multiple of 4, then the data padded to a multiple of 4.  The archive
ends with an entry named ``TRAILER!!!``.
"""

from __future__ import annotations

import errno
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from microagent.errors import NotFound, Permanent, ResourceExhausted
from microagent.fsutil import atomic_writer
from microagent.kernels.modules import load_conditions

__all__ = [
    "CpioEntry",
    "INITRAMFS_MARKER",
    "build_initramfs",
    "initramfs_entries",
    "write_cpio",
]

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
INITRAMFS_MARKER = "microagent-initramfs"
HEADER_SIZE = 110
_MAX_FIELD = 0xFFFFFFFF
_NN_PREFIX = re.compile(r"^\d{2}-")


@dataclass(frozen=True)
class CpioEntry:
    """One archive member.  ``path`` is relative (no leading ``/``)."""

    path: str
    mode: int  # file type bits | permission bits
    data: bytes = b""  # file contents, or the target of a symlink
    rdev_major: int = 0
    rdev_minor: int = 0
    uid: int = 0
    gid: int = 0

    @staticmethod
    def directory(path: str, perm: int = 0o755) -> "CpioEntry":
        """A directory entry."""
        return CpioEntry(_clean(path), stat.S_IFDIR | perm)

    @staticmethod
    def file(path: str, data: bytes, perm: int = 0o644) -> "CpioEntry":
        """A regular file entry."""
        return CpioEntry(_clean(path), stat.S_IFREG | perm, data)

    @staticmethod
    def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> "CpioEntry":
        """A character device node (e.g. ``dev/console`` 5,1)."""
        return CpioEntry(_clean(path), stat.S_IFCHR | perm, b"", major, minor)

    @staticmethod
    def block_device(path: str, major: int, minor: int, perm: int = 0o600) -> "CpioEntry":
        """A block device node."""
        return CpioEntry(_clean(path), stat.S_IFBLK | perm, b"", major, minor)

    @staticmethod
    def symlink(path: str, target: str) -> "CpioEntry":
        """A symbolic link to ``target``."""
        return CpioEntry(_clean(path), stat.S_IFLNK | 0o777, target.encode())


def _clean(path: str) -> str:
    """Normalise an archive path to its relative form, rejecting escapes.

    :raises Permanent: unencodable, empty, NUL, ``.``/``..`` components or the trailer name.
    """
    parts = [p for p in path.split("/") if p]
    if not parts or "\x00" in path or any(p in (".", "..") for p in parts):
        raise Permanent(f"invalid initramfs path {path!r}", "use a relative path without '.', '..' or NUL")
    cleaned = "/".join(parts)
    try:
        cleaned.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise Permanent(f"initramfs path {path!r} cannot be encoded", "use a UTF-8 path") from exc
    if cleaned == TRAILER:
        raise Permanent(f"initramfs path {path!r} is reserved for the archive trailer", "rename the entry")
    return cleaned


def _sort_key(entry: CpioEntry) -> list[bytes]:
    # Component-wise so a directory precedes everything inside it.
    return [p.encode("utf-8", "surrogateescape") for p in entry.path.split("/")]


def _header(
    ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int, rmaj: int, rmin: int, namesize: int
) -> bytes:
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rmaj, rmin, namesize, 0)
    for value in fields:
        if not 0 <= value <= _MAX_FIELD:
            raise Permanent(f"cpio header field {value} does not fit 32 bits", "use a smaller file")
    return NEWC_MAGIC + b"".join(b"%08X" % v for v in fields)


def _pad(n: int) -> bytes:
    return b"\x00" * (-n % 4)


def write_cpio(entries: Iterable[CpioEntry], out: BinaryIO, *, mtime: int = 0) -> int:
    """Write a ``newc`` archive of ``entries`` (sorted by path) to ``out``.

    :param mtime: the modification time stamped on every entry.
    :returns: the number of bytes written.
    :raises Permanent: duplicate paths, invalid paths, or a field overflows.
    """
    ordered = sorted(entries, key=_sort_key)
    seen: set[str] = set()
    written = 0
    for ino, entry in enumerate(ordered, 1):
        path = _clean(entry.path)
        if path in seen:
            raise Permanent(f"initramfs path {path!r} appears twice", "give each entry a unique path")
        seen.add(path)
        name = path.encode("utf-8", "surrogateescape") + b"\x00"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        data = entry.data if (stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode)) else b""
        head = _header(
            ino, entry.mode, entry.uid, entry.gid, nlink, mtime, len(data),
            entry.rdev_major, entry.rdev_minor, len(name),
        )  # fmt: skip
        chunk = head + name + _pad(HEADER_SIZE + len(name)) + data + _pad(len(data))
        out.write(chunk)
        written += len(chunk)
    name = TRAILER.encode() + b"\x00"
    chunk = _header(0, 0, 0, 0, 1, 0, 0, 0, 0, len(name)) + name + _pad(HEADER_SIZE + len(name))
    out.write(chunk)
    return written + len(chunk)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"{what} {path} does not exist", "check the path or rebuild it") from exc
    except OSError as exc:
        raise Permanent(f"cannot read {what} {path}: {exc.strerror}", "check its permissions") from exc


def _module_entry_name(path: Path) -> str:
    """``NN-name.ko`` → ``name``; ``virtio-rng.ko`` → ``virtio_rng``."""
    base = path.name
    if base.endswith(".ko"):
        base = base[:-3]
    return _NN_PREFIX.sub("", base).replace("-", "_")


def initramfs_entries(init_binary: bytes, modules: Sequence[tuple[str, bytes]]) -> list[CpioEntry]:
    """The entries of microagent's initramfs layout.

    :param modules: ``(name, plain .ko bytes)`` in load order.
    :raises Permanent: more than 100 modules.
    """
    if len(modules) > 100:
        raise Permanent(f"{len(modules)} modules do not fit two-digit load order names", "load fewer modules")
    entries = [
        CpioEntry.file("init", init_binary, 0o755),
        CpioEntry.file(INITRAMFS_MARKER, b"", 0o644),
        CpioEntry.directory("dev"),
        CpioEntry.char_device("dev/console", 5, 1, 0o600),
        CpioEntry.directory("proc", 0o555),
        CpioEntry.directory("sys", 0o555),
        CpioEntry.directory("newroot"),
        CpioEntry.directory("modules"),
    ]
    conditions = []
    for i, ((name, data), needed_for) in enumerate(zip(modules, load_conditions(modules))):
        entries.append(CpioEntry.file(f"modules/{i:02d}-{name}.ko", data, 0o644))
        if needed_for is not None:
            conditions.append(f"{i:02d}-{name}.ko " + " ".join(f"{d:#06x}" for d in sorted(needed_for)) + "\n")
    if conditions:
        entries.append(CpioEntry.file("modules/conditions", "".join(conditions).encode(), 0o644))
    return entries


def build_initramfs(init_binary: Path, module_files: Sequence[Path], out_path: Path) -> Path:
    """Write microagent's initramfs to ``out_path`` atomically (temp file + rename).

    :param init_binary: the guest init executable (becomes ``/init``).
    :param module_files: plain ``.ko`` files in load order; a leading ``NN-``
        in their names is dropped and replaced by the position here.
    :returns: ``out_path``.
    :raises NotFound: the init binary or a module file does not exist.
    :raises Permanent: unreadable inputs or an unwritable destination.
    :raises ResourceExhausted: the disk is full.
    """
    init = _read(init_binary, "guest init binary")
    modules = [(_module_entry_name(p), _read(p, "kernel module")) for p in module_files]
    entries = initramfs_entries(init, modules)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(out_path) as fh:
            write_cpio(entries, fh)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ResourceExhausted(f"disk full writing initramfs {out_path}", "free some disk space") from exc
        raise Permanent(f"cannot write initramfs {out_path}: {exc.strerror}", "check permissions") from exc
    return out_path
