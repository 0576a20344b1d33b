"""Reading the file tree of an ext4 image that was never mounted, with debugfs.

Owns listing a disk a guest wrote (``commit``): every path with its inode's
kind, owner, mode, size, times and link target, and dumping the data of
chosen regular files into a private directory.  The disk is hostile input,
so nothing here follows a link or trusts a name:

* directories are listed with ``ls -p <ino>`` (inodes, never paths), level by
  level, one debugfs run per level; a name with ``/``, a newline or a carriage
  return (which a crafted disk can hold but no OCI layer may), a directory
  reached twice (a hard-linked directory, a loop) and more entries than the
  cap are refused (``Permanent``);
* symlink targets are read as bytes (``stat``'s fast-link text, or ``dump``
  for longer ones, capped at 4095 bytes) and never resolved on the host;
* file data is dumped by inode number into files this module names, inside a
  private directory, after the total size was checked against the cap.

debugfs exits 0 even when a command fails, so its output is parsed strictly:
anything that is not a command echo or an expected line is an error.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from microagent.errors import Permanent, ResourceExhausted
from microagent.images.metadata import find_debugfs, quote

ROOT_INO = 2
MAX_LINK_TARGET = 4095
#: cap on the bytes of one debugfs listing/stat output read back (a hostile disk cannot make us hold more)
MAX_OUTPUT_BYTES = 1 << 30

_LS_LINE = re.compile(rb"^/(\d+)/([0-7]{6})/(\d+)/(\d+)/(.*)/(\d*)/$", re.S)
_KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFCHR: "chr",
          stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock"}
HOSTILE = "the disk holds something no OCI layer can carry; remove it in the guest and commit again"


@dataclass
class Node:
    """One path of the tree (hard links: several paths, one ``ino``)."""

    ino: int
    kind: str  # dir | file | symlink | chr | blk | fifo | sock
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    size: int
    mtime: int = 0  # seconds
    mtime_ns: int = 0
    ctime_ns: int = 0
    links: int = 1
    target: bytes = b""  # symlinks
    rdev: tuple[int, int] = (0, 0)  # devices

    def key(self) -> tuple[object, ...]:
        """What says "unchanged" between two disks of one lineage (the workspace's disk
        starts as a copy of the base disk: an untouched file keeps inode and times)."""
        return (self.ino, self.kind, self.mode, self.uid, self.gid, self.size, self.mtime_ns, self.ctime_ns,
                self.target, self.rdev)


def _run(script: bytes, image: Path, workdir: Path, tag: str) -> Path:
    """Run a debugfs script read-only; its merged output goes to a file (bounded)."""
    script_path = workdir / f"{tag}.cmds"
    out_path = workdir / f"{tag}.out"
    script_path.write_bytes(script)
    with open(out_path, "wb") as out:
        proc = subprocess.run([find_debugfs(), "-f", str(script_path), str(image)], stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise Permanent(f"debugfs could not read {image.name} (exit {proc.returncode})",
                        "the disk is damaged; start the workspace once so its guest repairs it")
    if out_path.stat().st_size > MAX_OUTPUT_BYTES:
        raise ResourceExhausted(f"reading {image.name} produced more than {MAX_OUTPUT_BYTES} bytes of listings",
                                "the disk has too many files to commit")
    return out_path


def _blocks(out: Path, verb: bytes) -> Iterator[tuple[int, bytes]]:
    """``(inode, output)`` per ``debugfs: VERB <ino>`` echo; the banner line is skipped."""
    data = out.read_bytes()
    marker = re.compile(rb"^debugfs: " + re.escape(verb) + rb" <(\d+)>(?: [^\n]*)?$", re.M)
    matches = list(marker.finditer(data))
    seen: set[int] = set()
    for i, m in enumerate(matches):
        ino = int(m.group(1))
        if ino in seen:  # text in a symlink target posing as a command echo
            raise Permanent(f"debugfs output for inode {ino} of {out.name} appears twice", HOSTILE)
        seen.add(ino)
        end = matches[i + 1].start() if i + 1 < len(matches) else len(data)
        yield ino, data[m.end() + 1:end]


def _check_name(name: bytes, parent: str) -> str:
    if b"/" in name or b"\n" in name or b"\r" in name or not name:
        shown = name[:64].decode("utf-8", "backslashreplace")
        raise Permanent(f"the disk has an entry in /{parent} whose name {shown!r} contains '/', a newline "
                        "or a carriage return", HOSTILE, entry=f"/{parent}")
    return os.fsdecode(name)


def read_tree(image: Path, workdir: Path, *, max_entries: int,
              skip: Callable[[str, str], bool] = lambda rel, kind: False) -> dict[str, Node]:
    """Every path of ``image`` (relative, no leading ``/``; ``""`` is the root) with its inode.

    :param workdir: a private, empty directory for debugfs scripts and outputs.
    :param skip: ``(path, kind) -> bool``: leave a path (and, for a directory, what is under it) out.
    :raises Permanent: a hostile entry (see the module docstring) or an unreadable disk.
    :raises ResourceExhausted: more than ``max_entries`` paths.
    """
    nodes: dict[str, Node] = {}
    level: list[tuple[str, int]] = [("", ROOT_INO)]
    seen_dirs = {ROOT_INO}
    depth = 0
    while level:
        depth += 1
        if depth > 2048:
            raise Permanent(f"{image.name} nests directories deeper than 2048 levels", HOSTILE)
        script = b"".join(b"ls -p <%d>\n" % ino for _, ino in level)
        by_ino = {ino: rel for rel, ino in level}
        nxt: list[tuple[str, int]] = []
        for dir_ino, body in _blocks(_run(script, image, workdir, "ls"), b"ls -p"):
            parent = by_ino.get(dir_ino)
            if parent is None:
                raise Permanent(f"debugfs listed an inode {dir_ino} that was not asked for", HOSTILE)
            for line in body.split(b"\n"):
                if not line:
                    continue
                m = _LS_LINE.match(line)
                if m is None:
                    shown = line[:120].decode("utf-8", "backslashreplace")
                    raise Permanent(f"cannot read directory /{parent} of {image.name}: {shown}", HOSTILE,
                                    entry=f"/{parent}")
                ino, raw_mode, uid, gid, name, size = (int(m.group(1)), int(m.group(2), 8), int(m.group(3)),
                                                       int(m.group(4)), m.group(5), m.group(6))
                if name in (b".", b"..") or ino == 0:  # ino 0: an unused slot (lost+found has many)
                    continue
                text = _check_name(name, parent)
                rel = f"{parent}/{text}" if parent else text
                if len(os.fsencode(rel)) > 4000:
                    raise Permanent(f"a path of {image.name} is longer than 4000 bytes", HOSTILE, entry=rel[:200])
                kind = _KINDS.get(stat.S_IFMT(raw_mode))
                if kind is None:
                    raise Permanent(f"/{rel} of {image.name} has an unknown file type ({raw_mode:o})", HOSTILE,
                                    entry=f"/{rel}")
                if skip(rel, kind):
                    continue
                if len(nodes) >= max_entries:
                    raise ResourceExhausted(f"{image.name} has more than {max_entries} paths",
                                            "raise MICROAGENT_IMAGE_MAX_ENTRIES, or remove files in the guest")
                nodes[rel] = Node(ino, kind, stat.S_IMODE(raw_mode), uid, gid, int(size or 0))
                if kind == "dir":
                    if ino in seen_dirs:
                        raise Permanent(f"directory /{rel} of {image.name} is reached twice (a hard-linked "
                                        "directory or a loop)", HOSTILE, entry=f"/{rel}")
                    seen_dirs.add(ino)
                    nxt.append((rel, ino))
        level = nxt
    _stat_all(image, workdir, nodes)
    return nodes


_TIME = re.compile(rb"^ *(ctime|mtime): 0x([0-9a-f]{1,8})(?::([0-9a-f]{1,8}))? ", re.M)
_LINKS = re.compile(rb"^Links: (\d+) ", re.M)
_DEVICE = re.compile(rb"^Device major/minor number: (\d+):(\d+) ", re.M)
_FAST = b'Fast link dest: "'


def _ext4_time(lo: bytes, extra: bytes | None) -> int:
    """Nanoseconds since the epoch from an inode's 32-bit seconds and extra word."""
    secs = int(lo, 16)
    secs = secs - (1 << 32) if secs >= 1 << 31 else secs
    ns = 0
    if extra is not None:
        word = int(extra, 16)
        secs += (word & 3) << 32
        ns = word >> 2
    return secs * 1_000_000_000 + ns


def _stat_all(image: Path, workdir: Path, nodes: dict[str, Node]) -> None:
    by_ino: dict[int, list[Node]] = {}
    for node in nodes.values():
        by_ino.setdefault(node.ino, []).append(node)
    if not by_ino:
        return
    script = b"".join(b"stat <%d>\n" % ino for ino in sorted(by_ino))
    slow: list[int] = []
    for ino, body in _blocks(_run(script, image, workdir, "stat"), b"stat"):
        group = by_ino.get(ino)
        if group is None:
            continue
        first = group[0]
        at = body.find(_FAST)
        meta = body[:at] if at >= 0 else body  # a link target is text the guest chose: never parsed
        times = {m.group(1): _ext4_time(m.group(2), m.group(3)) for m in _TIME.finditer(meta)}
        if b"mtime" not in times or b"ctime" not in times:
            raise Permanent(f"cannot read inode {ino} of {image.name}", HOSTILE)
        links = _LINKS.search(meta)
        dev = _DEVICE.search(meta)
        target = b""
        if first.kind == "symlink":
            if first.size > MAX_LINK_TARGET or first.size == 0:
                raise Permanent(f"a symlink of {image.name} has a {first.size}-byte target", HOSTILE)
            if at >= 0:
                target = body[at + len(_FAST):at + len(_FAST) + first.size]
            else:
                slow.append(ino)
        for node in group:
            node.mtime_ns, node.ctime_ns = times[b"mtime"], times[b"ctime"]
            node.mtime = node.mtime_ns // 1_000_000_000
            node.links = int(links.group(1)) if links else 1
            node.target = target
            if dev is not None and node.kind in ("chr", "blk"):
                node.rdev = (int(dev.group(1)), int(dev.group(2)))
    if slow:
        links_dir = workdir / "links"
        links_dir.mkdir(mode=0o700, exist_ok=True)
        dump_files(image, workdir, links_dir, slow, {ino: by_ino[ino][0].size for ino in slow})
        for ino in slow:
            data = (links_dir / str(ino)).read_bytes()
            for node in by_ino[ino]:
                node.target = data
    for group in by_ino.values():
        if group[0].kind == "symlink" and (b"\0" in group[0].target or len(group[0].target) != group[0].size):
            raise Permanent(f"a symlink of {image.name} has an unreadable target", HOSTILE)


def dump_files(image: Path, workdir: Path, dest: Path, inos: list[int], sizes: dict[int, int]) -> None:
    """Write the data of each inode in ``inos`` to ``dest/<ino>`` (a private directory this module owns).

    :raises Permanent: debugfs reported an error, or a file came out another size than its inode says.
    """
    if not inos:
        return
    script = b"".join(b"dump <%d> %s\n" % (ino, quote(str(dest / str(ino)))) for ino in inos)
    for ino, body in _blocks(_run(script, image, workdir, "dump"), b"dump"):
        message = body.strip()
        if message:
            shown = message[:200].decode("utf-8", "backslashreplace")
            raise Permanent(f"cannot read inode {ino} of {image.name}: {shown}", HOSTILE)
    for ino in inos:
        path = dest / str(ino)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size != sizes[ino]:
            raise Permanent(f"inode {ino} of {image.name} read back as {st.st_size} bytes, its inode says "
                            f"{sizes[ino]}", HOSTILE)
