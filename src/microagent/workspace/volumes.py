"""Volumes (named ext4 disks that outlive workspaces) and ``-v`` mount specs.

A volume is ``<root>/volumes/<name>/disk.ext4`` with ``volume.json`` beside it
(docs/volumes.md).  A workspace attaches it with ``-v NAME:/guest/path[:ro]``;
a host folder is ``-v /host/dir:/guest/path[:ro]`` (a live share: virtiofs on
QEMU; on Firecracker, which has no shared filesystem, a snapshot of the folder
as an ext4 disk made at every start).  Both reach the guest as
``config.disks`` / ``config.shares`` and guest init mounts them from the config
disk's ``mounts`` list (guest/mounts.c).

Single writer: a read-write attachment excludes every other attachment of
the volume; read-only ones may share it.  An attachment is a *claim* file
``claims/<workspace>`` taken under ``volumes/.lock`` when the workspace is
created (or a ``run`` starts) and released when it is deleted (or the run
ends).  A claim whose workspace has neither a directory nor runtime state and
whose creating process is gone is stale and dropped, so a crash never wedges
a volume.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from msgspec import Struct

from microagent.errors import Conflict, InvalidRequest, NotFound, Permanent, ResourceExhausted
from microagent.fsutil import atomic_write, private_dir
from microagent.paths import runtime_dir, workspace_dir
from microagent.vmkit.basics import is_safe_name, now_rfc3339

DISK_NAME = "disk.ext4"
META_NAME = "volume.json"
DEFAULT_SIZE_MIB = 1024
SIZE_RANGE_MIB = (16, 1024 * 1024)
#: guest paths a mount may not cover: guest init's own mounts
RESERVED_GUEST_PATHS = ("/proc", "/sys", "/dev")
MAX_GUEST_PATH = 255
MAX_MOUNTS = 16
#: backends that serve a host folder live; elsewhere (SNAPSHOT_BACKENDS) it is copied at start
SHARE_BACKENDS = ("qemu", "apple-vf")
SNAPSHOT_BACKENDS = ("firecracker",)
#: a folder snapshot's bounds: the folder's content and its entries (files, dirs, links)
FOLDER_SNAPSHOT_MAX_BYTES = 2 << 30
FOLDER_SNAPSHOT_MAX_ENTRIES = 200_000
FOLDER_SNAPSHOTS_DIR = "folder-snapshots"  # in the workspace directory

_NAME_RULE = "1-63 characters from A-Z a-z 0-9 . _ - starting with a letter or digit"
_SPEC_FORM = "use NAME:/guest/path[:ro] for a volume or /host/dir:/guest/path[:ro] for a host folder"


# ------------------------------------------------------------------ -v specs

class MountSpec(Struct, frozen=True):
    """One ``-v``: a volume name or an absolute host folder, where it goes, and how."""

    source: str
    target: str
    read_only: bool = False
    #: ``:rw`` was written out (a folder snapshot is read-only unless asked); how it was
    #: spelled, not what it is: equality and hash leave it out
    rw_given: bool = False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MountSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, str, bool]:
        return self.source, self.target, self.read_only

    @property
    def is_folder(self) -> bool:
        return self.source.startswith("/")

    def to_spec(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else ":rw" if self.rw_given else "")


def check_volume_name(name: str) -> str:
    """:raises InvalidRequest: unless ``name`` is a safe basename."""
    if not is_safe_name(name):
        raise InvalidRequest(f"volume name {name!r} is not a safe name", f"use {_NAME_RULE}")
    return name


def check_guest_path(path: str, where: str = "guest path") -> str:
    """An absolute, normalised guest path that covers none of guest init's mounts.

    :raises InvalidRequest: relative, ``..``/``.`` components, ``/``, under /proc, /sys or /dev,
        control characters, or longer than 255 bytes.
    """
    if not path.startswith("/"):
        raise InvalidRequest(f"{where} {path!r} is not absolute", "give the mount point as /some/dir")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path) or len(path.encode()) > MAX_GUEST_PATH:
        raise InvalidRequest(f"{where} {path!r} has control characters or is over {MAX_GUEST_PATH} bytes")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidRequest(f"{where} {path!r} has '.' or '..' components", "give a plain absolute path")
    norm = "/" + "/".join(parts)
    if norm == "/":
        raise InvalidRequest(f"{where} / cannot be a mount point", "mount it on a directory such as /data")
    for reserved in RESERVED_GUEST_PATHS:
        if norm == reserved or norm.startswith(reserved + "/"):
            raise InvalidRequest(f"{where} {path!r} is under {reserved}, which guest init mounts itself",
                                 "mount it elsewhere, e.g. /data or /work")
    return norm


def parse_mount_spec(spec: str) -> MountSpec:
    """``SOURCE:/guest/path[:ro|:rw]``; SOURCE is a volume name or an absolute host directory.

    The host folder is resolved (symlinks followed) and must be an existing directory.

    :raises InvalidRequest: naming what is wrong, before anything is created.
    """
    if not isinstance(spec, str) or not spec:
        raise InvalidRequest(f"volume spec {spec!r} is empty", _SPEC_FORM)
    read_only = rw_given = False
    source, sep, target = spec.partition(":")
    if not sep or not target:
        raise InvalidRequest(f"volume spec {spec!r} has no guest path", _SPEC_FORM)
    head, sep2, mode = target.rpartition(":")
    if sep2:
        if mode not in ("ro", "rw"):
            raise InvalidRequest(f"volume spec {spec!r}: mode {mode!r} is not ro or rw "
                                 "(a host path cannot contain ':')", _SPEC_FORM)
        target, read_only, rw_given = head, mode == "ro", mode == "rw"
    target = check_guest_path(target, f"volume spec {spec!r}: guest path")
    if source.startswith("/"):
        if "\x00" in source:
            raise InvalidRequest(f"volume spec {spec!r}: host path has a NUL byte")
        real = os.path.realpath(source)
        if not os.path.isdir(real):
            raise InvalidRequest(f"host folder {source} does not exist or is not a directory",
                                 "create it first, or give an existing directory")
        source = real
    else:
        try:
            check_volume_name(source)
        except InvalidRequest as exc:
            raise InvalidRequest(f"volume spec {spec!r}: {exc.message}",
                                 f"{_SPEC_FORM} (a host folder must be an absolute path)") from None
    return MountSpec(source, target, read_only, rw_given)


def parse_mount_specs(specs: Sequence[str]) -> tuple[MountSpec, ...]:
    """Every ``-v`` parsed; the guest paths must be distinct and none inside another.

    :raises InvalidRequest: a bad spec, too many, a volume given twice, or nested guest paths.
    """
    if isinstance(specs, str):
        raise InvalidRequest("volumes must be a list of specs, not one string", _SPEC_FORM)
    mounts = tuple(parse_mount_spec(s) for s in specs)
    if len(mounts) > MAX_MOUNTS:
        raise InvalidRequest(f"{len(mounts)} volumes and folders; at most {MAX_MOUNTS}")
    targets = sorted(m.target for m in mounts)
    for a, b in zip(targets, targets[1:]):
        if a == b or b.startswith(a + "/"):
            raise InvalidRequest(f"guest paths {a} and {b} overlap", "give each mount its own directory")
    volumes = [m.source for m in mounts if not m.is_folder]
    for name in volumes:
        if volumes.count(name) > 1:
            raise InvalidRequest(f"volume {name} is attached twice", "attach a volume once per workspace")
    return mounts


# ------------------------------------------------------------------ the store

def volumes_dir(root: Path) -> Path:
    return root / "volumes"


def volume_dir(root: Path, name: str) -> Path:
    return volumes_dir(root) / check_volume_name(name)


@contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Every change to volumes and claims happens under this one lock (short holds only)."""
    private_dir(volumes_dir(root))
    fd = os.open(volumes_dir(root) / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_volume_size(size_mib: int) -> int:
    """:raises InvalidRequest: unless ``size_mib`` is a whole number of MiB in range."""
    if isinstance(size_mib, bool) or not isinstance(size_mib, int) or not (
            SIZE_RANGE_MIB[0] <= size_mib <= SIZE_RANGE_MIB[1]):
        raise InvalidRequest(f"volume size {size_mib!r} MiB is out of range",
                             f"give --size between {SIZE_RANGE_MIB[0]} and {SIZE_RANGE_MIB[1]} MiB")
    return size_mib


def _meta(root: Path, name: str) -> dict[str, Any]:
    path = volume_dir(root, name) / META_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"volume {name} does not exist",
                       f"create it with 'microagent volume create {name}', or see 'microagent volume ls'") from None
    except (OSError, ValueError) as exc:
        raise Permanent(f"cannot read {path}: {exc}", f"remove it with 'microagent volume rm {name}'") from exc
    if not isinstance(doc, dict):
        raise Permanent(f"{path} is not a volume record", f"remove it with 'microagent volume rm {name}'")
    return doc


def create_volume(root: Path, name: str, size_mib: int = DEFAULT_SIZE_MIB) -> dict[str, Any]:
    """A new empty ext4 volume of ``size_mib`` MiB (sparse).

    :raises InvalidRequest: bad name or size. :raises Conflict: it exists.
    """
    from microagent.images.ext4 import build_ext4

    check_volume_name(name)
    check_volume_size(size_mib)
    with store_lock(root):
        vdir = volume_dir(root, name)
        if vdir.exists():
            raise Conflict(f"volume {name} already exists", f"pick another name, or remove it with "
                                                            f"'microagent volume rm {name}'")
        stage = volumes_dir(root) / f".{name}.creating-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        try:
            private_dir(stage / "empty")
            build_ext4(stage / "empty", stage / DISK_NAME, key=f"volume:{name}:{os.urandom(8).hex()}",
                       size_bytes=size_mib * 1024 * 1024, label=name[:16])
            os.rmdir(stage / "empty")
            doc = {"name": name, "sizeMiB": size_mib, "createdAt": now_rfc3339()}
            atomic_write(stage / META_NAME, json.dumps(doc).encode())
            os.rename(stage, vdir)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    return inspect_volume(root, name)


def volume_disk(root: Path, name: str) -> Path:
    """:raises NotFound: for an unknown volume."""
    _meta(root, name)
    return volume_dir(root, name) / DISK_NAME


def inspect_volume(root: Path, name: str) -> dict[str, Any]:
    """The record, the disk's path and space used, and who holds it."""
    doc = _meta(root, name)
    disk = volume_dir(root, name) / DISK_NAME
    try:
        used = disk.stat().st_blocks * 512
    except OSError:
        used = 0
    return {"name": name, "sizeMiB": doc.get("sizeMiB"), "createdAt": doc.get("createdAt"),
            "path": str(disk), "usedBytes": used, "attachedTo": holders(root, name)}


def list_volumes(root: Path) -> list[dict[str, Any]]:
    base = volumes_dir(root)
    if not base.is_dir():
        return []
    out = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(".") or not is_safe_name(entry.name):
            continue
        try:
            out.append(inspect_volume(root, entry.name))
        except (NotFound, Permanent):
            continue
    return out


def remove_volume(root: Path, name: str) -> dict[str, Any]:
    """Delete a volume and its data.

    :raises NotFound: unknown volume. :raises Conflict: while a workspace holds it, naming it.
    """
    with store_lock(root):
        _meta(root, name)
        held = holders(root, name)
        if held:
            who = ", ".join(f"{h['workspace']} ({h['mode']})" for h in held)
            raise Conflict(f"volume {name} is attached to workspace {who}",
                           f"delete the workspace first: 'microagent delete {held[0]['workspace']}'")
        vdir = volume_dir(root, name)
        doomed = volumes_dir(root) / f".{name}.removing-{os.getpid()}"
        os.rename(vdir, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return {"name": name, "removed": True}


# ------------------------------------------------------------------ claims

def _claims_dir(root: Path, name: str) -> Path:
    return volume_dir(root, name) / "claims"


def _claim_live(root: Path, workspace: str, doc: dict[str, Any]) -> bool:
    if workspace_dir(root, workspace).exists() or runtime_dir(root, workspace).exists():
        return True
    from microagent.host.process import ProcessRef, is_alive

    pid, start = doc.get("pid"), doc.get("starttime")
    return isinstance(pid, int) and isinstance(start, int) and is_alive(ProcessRef(pid, start))


def holders(root: Path, name: str) -> list[dict[str, str]]:
    """The workspaces holding volume ``name`` (stale claims are dropped)."""
    out = []
    cdir = _claims_dir(root, name)
    if not cdir.is_dir():
        return out
    for entry in sorted(cdir.iterdir()):
        try:
            doc = json.loads(entry.read_text())
        except (OSError, ValueError):
            doc = {}
        if not isinstance(doc, dict) or not is_safe_name(entry.name) or not _claim_live(root, entry.name, doc):
            entry.unlink(missing_ok=True)
            continue
        out.append({"workspace": entry.name, "mode": str(doc.get("mode", "rw")), "since": str(doc.get("since", ""))})
    return out


def claim(root: Path, workspace: str, mounts: Sequence[MountSpec]) -> None:
    """Take the claims of ``workspace`` on its volumes, all or none.

    :raises NotFound: an unknown volume.
    :raises Conflict: a read-write attach of a volume another workspace holds, or any attach
        of one another workspace holds read-write (naming the holder).
    """
    wanted = [m for m in mounts if not m.is_folder]
    if not wanted:
        return
    from microagent.host.process import ref_for

    me = ref_for(os.getpid())
    with store_lock(root):
        for m in wanted:
            _meta(root, m.source)
            others = [h for h in holders(root, m.source) if h["workspace"] != workspace]
            writers = [h for h in others if h["mode"] == "rw"]
            blocking = others if not m.read_only else writers
            if blocking:
                h = blocking[0]
                hint = (f"; or attach it read-only: -v {m.source}:{m.target}:ro"
                        if h["mode"] == "ro" else "")
                raise Conflict(f"volume {m.source} is attached to workspace {h['workspace']} ({h['mode']}); "
                               "a volume has a single writer at a time",
                               f"delete workspace {h['workspace']} first{hint}")
        for m in wanted:
            doc = {"mode": "ro" if m.read_only else "rw", "since": now_rfc3339(), **me.to_json()}
            private_dir(_claims_dir(root, m.source))
            atomic_write(_claims_dir(root, m.source) / workspace, json.dumps(doc).encode())


def release(root: Path, workspace: str) -> None:
    """Drop every claim of ``workspace`` (idempotent)."""
    base = volumes_dir(root)
    if not base.is_dir():
        return
    with store_lock(root):
        for entry in base.iterdir():
            if not entry.name.startswith("."):
                (entry / "claims" / workspace).unlink(missing_ok=True)


# ------------------------------------------------------------------ what the VM gets

def check_backend(mounts: Sequence[MountSpec], backend: str) -> None:
    """:raises Unsupported: host folders on a backend that can neither share nor snapshot them."""
    from microagent.errors import Unsupported

    folders = [m for m in mounts if m.is_folder]
    if folders and backend not in SHARE_BACKENDS + SNAPSHOT_BACKENDS:
        raise Unsupported(f"host folders (-v {folders[0].to_spec()}) need a shared filesystem or a raw "
                          f"extra disk, which the {backend} backend does not have here",
                          "use --backend qemu (or apple-vf on macOS), or copy files in with 'microagent cp'")


def folder_usage(folder: str) -> tuple[int, int]:
    """``(bytes, entries)`` of a host folder as an ext4 copy needs them (4 KiB blocks), never
    following a symlink.

    :raises ResourceExhausted: past :data:`FOLDER_SNAPSHOT_MAX_BYTES` or ``_ENTRIES``.
    :raises Permanent: an unreadable directory.
    """
    total = entries = 0

    def fail(exc: OSError) -> None:
        raise Permanent(f"cannot read host folder {folder}: {exc}", "make it readable, or share another folder")

    for top, dirs, files in os.walk(folder, onerror=fail):
        for name in dirs + files:
            entries += 1
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue  # gone meanwhile
            if not stat.S_ISDIR(st.st_mode):
                total += (st.st_size + 4095) // 4096 * 4096
        if total > FOLDER_SNAPSHOT_MAX_BYTES or entries > FOLDER_SNAPSHOT_MAX_ENTRIES:
            raise ResourceExhausted(
                f"host folder {folder} is too large to copy into the guest (over "
                f"{FOLDER_SNAPSHOT_MAX_BYTES >> 20} MiB or {FOLDER_SNAPSHOT_MAX_ENTRIES} entries); this "
                "backend has no shared filesystem, so a folder is copied at every start",
                "share a smaller folder, put the data in a volume, or use --backend qemu")
    return total, entries


def folder_snapshot(root: Path, workspace: str, index: int, mount: MountSpec) -> Any:
    """The ``Disk`` for host folder ``mount`` on a backend without a shared filesystem: a
    fresh ext4 copy (``mke2fs -d``: symlinks stay symlinks, resolved in the guest) at
    ``<workspace dir>/folder-snapshots/N.ext4`` (0600).  Read-only unless ``:rw`` was
    written out; a ``:rw`` copy is writable but nothing is written back.

    :raises ResourceExhausted: a folder over the bounds, or no room for its copy.
    """
    from microagent.images.ext4 import build_ext4
    from microagent.vmkit.types import Disk

    used, entries = folder_usage(mount.source)
    headroom = 64 << 20 if mount.rw_given else 16 << 20
    size = used * 5 // 4 + entries * 512 + headroom  # data, inodes and directories, then slack
    size = (size + (1 << 20) - 1) >> 20 << 20
    out = private_dir(workspace_dir(root, workspace) / FOLDER_SNAPSHOTS_DIR) / f"{index}.ext4"
    build_ext4(Path(mount.source), out, key=f"folder:{workspace}:{index}:{os.urandom(8).hex()}",
               size_bytes=size, label=f"folder{index}")
    return Disk(name=f"folder-{index}", path=str(out), mountpoint=mount.target,
                mode="rw" if mount.rw_given else "ro")


def remove_folder_snapshots(root: Path, workspace: str) -> None:
    """Drop the folder copies of a workspace's last boot (idempotent)."""
    shutil.rmtree(workspace_dir(root, workspace) / FOLDER_SNAPSHOTS_DIR, ignore_errors=True)


def check_attachable(root: Path, mounts: Sequence[MountSpec], backend: str, kernel: Path) -> None:
    """Everything about ``mounts`` that can be checked before anything is built.

    :raises Unsupported: host folders on a backend without a shared filesystem.
    :raises InvalidRequest: a host folder inside the state directory.
    :raises NotFound: an unknown volume, or a kernel installed without virtiofs.
    """
    check_backend(mounts, backend)
    state = os.path.realpath(root)
    for m in mounts:
        if not m.is_folder:
            volume_disk(root, m.source)
        elif m.source == state or m.source.startswith(state.rstrip("/") + "/"):
            # the guest would reach its own disk, kernel, guest init and every other workspace
            raise InvalidRequest(f"host folder {m.source} is inside the microagent state directory {state}",
                                 "share a folder outside it; use a volume for data that lives with microagent")
        elif backend in SNAPSHOT_BACKENDS:
            folder_usage(m.source)  # too large is refused now, not at the first start
    if any(m.is_folder for m in mounts) and backend in SHARE_BACKENDS:
        from microagent.kernels.store import KERNEL_JSON, KernelRecord, missing_guest_modules

        try:
            record = KernelRecord.from_json(json.loads((kernel.parent / KERNEL_JSON).read_text()), kernel.parent)
        except (OSError, ValueError, Permanent):
            return  # a kernel given by hand: its own business; the guest reports a failed mount
        if "virtiofs" in missing_guest_modules(record):
            raise NotFound(f"the installed {backend} kernel has no virtiofs module, which host folders need",
                           f"reinstall it: microagent kernel install --backend {backend}")


def vm_devices(root: Path, mounts: Sequence[MountSpec], *, backend: str = "qemu",
               workspace: str | None = None) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """``(disks, shares)`` for the supervisor config, in the order given.  On a
    :data:`SNAPSHOT_BACKENDS` backend a host folder becomes a disk: a copy made now
    (:func:`folder_snapshot`, which needs ``workspace``).

    :raises NotFound: an unknown volume or a host folder that is gone.
    """
    from microagent.vmkit.types import Disk, Share

    disks, shares = [], []
    snapshot = backend in SNAPSHOT_BACKENDS
    if snapshot and workspace is not None:
        remove_folder_snapshots(root, workspace)  # the last boot's copies
    for m in mounts:
        mode = "ro" if m.read_only else "rw"
        if m.is_folder:
            if not os.path.isdir(m.source):
                raise NotFound(f"host folder {m.source} is gone", "recreate it, or delete the workspace")
            if snapshot:
                assert workspace is not None, "a folder snapshot belongs to a workspace"
                disks.append(folder_snapshot(root, workspace, len(disks), m))
            else:
                shares.append(Share(tag=f"share{len(shares)}", path=m.source, mountpoint=m.target, mode=mode))
        else:
            disks.append(Disk(name=f"volume-{m.source}", path=str(volume_disk(root, m.source)),
                              mountpoint=m.target, mode=mode))
    return tuple(disks), tuple(shares)
