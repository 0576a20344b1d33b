"""The metadata ledger: what the image says about each inode, applied with debugfs.

Layers are staged as an ordinary, unprivileged directory tree, which cannot
hold (or must not hold) everything an image says: ownership, setuid/setgid
bits, device nodes, FIFOs, extended attributes such as ``security.capability``.
:class:`Ledger` records, for every path of the staged image, the exact
:class:`Entry` the layers asked for; :func:`apply_ledger` writes it into a
built ext4 image with one ``debugfs -w -f SCRIPT IMAGE`` run.

What the script does, per inode (hard links share one :class:`Entry`):

* device nodes and FIFOs are created with ``cd DIR`` + ``mknod NAME ...``
  (debugfs links a path given to ``mknod`` literally, slashes and all, so the
  parent is entered first), their device number written to ``block[0..1]``
  in the kernel's encoding (``mknod`` itself only takes 16-bit numbers);
  extra hard links to them with ``ln`` and ``links_count``;
* ``mode``, ``uid``, ``gid`` where the staged inode differs from the entry;
* ``ctime`` always (mke2fs copies the host's ctime, which would make images
  differ between builds; the ledger's ctime is the entry's mtime), ``mtime``
  and ``atime`` where seconds alone (what mke2fs copies) are not exact;
* ``ea_set -f VALUEFILE`` for every xattr of the entry, ``ea_rm`` for any
  xattr the staging filesystem added (SELinux labels and the like).

Paths are quoted the way debugfs' command parser (``ss``) reads them: inside
double quotes everything is literal except ``"``, which is doubled.  A
newline or carriage return cannot be expressed in a script line, so
:mod:`.layers` refuses such names.  debugfs reports errors on stderr and
still exits 0, so stdout and stderr are merged line-buffered (``stdbuf``)
and every line that is not an echo of a command is an error of the command
before it.

What stays out: reading tar files (:mod:`.layers`) and running mke2fs
(:mod:`.ext4`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from microagent.errors import NotFound, Permanent

STAGED_KINDS = ("dir", "file", "symlink")
SPECIAL_KINDS = ("char", "block", "fifo")
_IFMT = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
         "char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}
NS = 1_000_000_000


@dataclass(eq=False)
class Entry:
    """What one inode must look like in the image.

    Compared by identity: hard links are paths that share one ``Entry``.

    :param kind: ``dir``, ``file``, ``symlink``, ``char``, ``block`` or ``fifo``.
    :param mode: permission bits including setuid/setgid/sticky (``0o7777``).
    :param mtime_ns: modification time in nanoseconds since the epoch (may be negative).
    :param atime_ns: access time; ``None`` means the same as ``mtime_ns``.
    """

    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None
    major: int = 0
    minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def special(self) -> bool:
        return self.kind in SPECIAL_KINDS

    @property
    def full_mode(self) -> int:
        return _IFMT[self.kind] | (self.mode & 0o7777)


class Ledger:
    """Every path of a staged image and the :class:`Entry` it must have.

    Paths are relative, ``/``-separated, without a leading slash; the root
    directory is ``""``.  A children index makes removing a subtree (for
    whiteouts and replacements) proportional to the subtree.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {"": Entry("dir", 0o755)}
        self._children: dict[str, set[str]] = {"": set()}

    def __contains__(self, rel: str) -> bool:
        return rel in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, rel: str) -> Entry | None:
        return self._entries.get(rel)

    def paths(self) -> list[str]:
        """All paths, sorted (parents before children)."""
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, Entry]]:
        for rel in self.paths():
            yield rel, self._entries[rel]

    def children(self, rel: str) -> list[str]:
        """Names directly inside directory ``rel``."""
        return sorted(self._children.get(rel, ()))

    def put(self, rel: str, entry: Entry) -> None:
        """Record ``entry`` at ``rel``; a directory replacing a directory keeps its children.

        :raises ValueError: when the parent is not a recorded directory.
        """
        parent, _, name = rel.rpartition("/")
        if rel == "":
            if entry.kind != "dir":
                raise ValueError("the root must be a directory")
            self._entries[""] = entry
            return
        pentry = self._entries.get(parent)
        if pentry is None or pentry.kind != "dir":
            raise ValueError(f"parent of {rel!r} is not a directory in the ledger")
        old = self._entries.get(rel)
        if old is not None and not (old.kind == "dir" and entry.kind == "dir"):
            self.remove(rel)
        self._entries[rel] = entry
        self._children[parent].add(name)
        if entry.kind == "dir":
            self._children.setdefault(rel, set())

    def remove(self, rel: str) -> None:
        """Forget ``rel`` and everything below it (no-op when absent)."""
        if rel == "" or rel not in self._entries:
            return
        stack = [rel]
        while stack:
            cur = stack.pop()
            del self._entries[cur]
            for name in self._children.pop(cur, ()):
                stack.append(f"{cur}/{name}")
        parent, _, name = rel.rpartition("/")
        self._children[parent].discard(name)

    def inodes(self) -> list[list[str]]:
        """Paths grouped by inode (shared :class:`Entry`), each group sorted, in path order."""
        groups: dict[int, list[str]] = {}
        for rel in self.paths():
            groups.setdefault(id(self._entries[rel]), []).append(rel)
        return sorted(groups.values(), key=lambda g: g[0])


def quote(path: str | bytes) -> bytes:
    """A debugfs command argument: ``"..."`` with embedded ``"`` doubled.

    :raises Permanent: for a newline or carriage return, which a script line cannot carry.
    """
    raw = os.fsencode(path)
    if b"\n" in raw or b"\r" in raw:
        raise Permanent(f"path {os.fsdecode(raw)!r} contains a newline, which debugfs cannot address",
                        "rename the file in the image")
    return b'"' + raw.replace(b'"', b'""') + b'"'


def image_path(rel: str) -> bytes:
    return quote("/" + rel)


def encode_dev(major: int, minor: int) -> tuple[int, int]:
    """``(block[0], block[1])`` of a device inode, as the kernel and libext2fs encode it."""
    if major < 256 and minor < 256:
        return major * 256 + minor, 0
    return 0, (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def _time_cmds(p: bytes, name: str, total_ns: int) -> list[bytes]:
    sec, ns = divmod(total_ns, NS)
    if ns == 0 and 0 <= sec < 2**31:
        return [b"set_inode_field %s %s @%d" % (p, name.encode(), sec)]
    lo = sec & 0xFFFFFFFF
    signed_lo = lo - (1 << 32) if lo & 0x80000000 else lo
    epoch = ((sec - signed_lo) >> 32) & 3
    return [b"set_inode_field %s %s_lo %d" % (p, name.encode(), lo),
            b"set_inode_field %s %s_extra %d" % (p, name.encode(), (ns << 2) | epoch)]


@dataclass
class Script:
    """A debugfs command file and the path each command line is about."""

    lines: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def add(self, rel: str, *cmds: bytes) -> None:
        for cmd in cmds:
            self.lines.append(cmd)
            self.paths.append(rel)

    def data(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines)


#: where an inode's address goes in a planned command (a NUL never occurs in a path or name)
_HERE = b"\x00"


@dataclass
class Plan:
    """The debugfs commands of a build before the image exists (:func:`plan_script`).

    ``head`` creates the special files; ``inodes`` holds, per inode (first
    path, special or not), command lines whose inode address is still a
    placeholder: :func:`render` fills in ``<ino>`` or the quoted path.
    """

    head: Script = field(default_factory=Script)
    inodes: list[tuple[str, bool, list[bytes]]] = field(default_factory=list)


def build_script(ledger: Ledger, staging: Path, values_dir: Path,
                 inodes: dict[str, int] | None = None) -> Script:
    """The debugfs commands that make the image built from ``staging`` match ``ledger``.

    xattr values are written into ``values_dir`` (one file per distinct value).

    :param inodes: path → inode number of the built image (:func:`inode_map`);
        paths found there are addressed as ``<ino>``, which spares debugfs a
        directory scan per command (libext2fs looks names up linearly).
    """
    return render(plan_script(ledger, staging, values_dir), inodes or {})


def render(plan: Plan, inodes: dict[str, int]) -> Script:
    """``plan`` with every inode addressed as ``<ino>`` where known, else by its path."""
    script = Script(list(plan.head.lines), list(plan.head.paths))
    for rel, special, cmds in plan.inodes:
        p = b"<%d>" % inodes[rel] if rel in inodes and not special else image_path(rel)
        script.add(rel, *(cmd.replace(_HERE, p) for cmd in cmds))
    return script


def plan_script(ledger: Ledger, staging: Path, values_dir: Path) -> Plan:
    """:func:`build_script` without inode numbers: needs the staged tree, not the image.

    So it can run while mke2fs builds the image (the tree is only read by both).
    """
    plan = Plan()
    script = plan.head
    root = os.fspath(staging)
    groups = ledger.inodes()
    # 1. special files (mke2fs saw nothing there), and their extra hard links
    for group in groups:
        entry = ledger.get(group[0])
        assert entry is not None
        if not entry.special:
            continue
        first = group[0]
        parent, _, name = first.rpartition("/")
        kind = b"p" if entry.kind == "fifo" else (b"c 0 0" if entry.kind == "char" else b"b 0 0")
        script.add(first, b"cd " + image_path(parent), b"mknod %s %s" % (quote(name), kind))
        for other in group[1:]:
            script.add(other, b"ln %s %s" % (image_path(first), image_path(other)))
    script.add("", b'cd "/"')
    # 2. every inode's fields
    for group in groups:
        rel = group[0]
        entry = ledger.get(rel)
        assert entry is not None
        p = _HERE
        mtime = entry.mtime_ns
        atime = mtime if entry.atime_ns is None else entry.atime_ns
        cmds: list[bytes] = []
        if entry.special or rel == "":
            cmds.append(b"set_inode_field %s mode 0%o" % (p, entry.full_mode))
            if entry.uid or rel == "":
                cmds.append(b"set_inode_field %s uid %d" % (p, entry.uid))
            if entry.gid or rel == "":
                cmds.append(b"set_inode_field %s gid %d" % (p, entry.gid))
            if entry.kind in ("char", "block"):
                b0, b1 = encode_dev(entry.major, entry.minor)
                cmds.append(b"set_inode_field %s block[0] %d" % (p, b0))
                cmds.append(b"set_inode_field %s block[1] %d" % (p, b1))
            if len(group) > 1:
                cmds.append(b"set_inode_field %s links_count %d" % (p, len(group)))
            cmds += _time_cmds(p, "mtime", mtime) + _time_cmds(p, "atime", atime)
            stray: list[str] = []
        else:
            smode: int | None
            suid: int | None
            sgid: int | None
            smtime: int | None
            satime: int | None
            spath = os.path.join(root, rel)
            try:
                st = os.lstat(spath)
                smode, suid, sgid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
                smtime, satime = st.st_mtime_ns // NS, st.st_atime_ns // NS
            except FileNotFoundError:
                # ledger and staging disagree (a bug): say everything, so debugfs names the path
                smode = suid = sgid = smtime = satime = None
            if smode != (entry.mode & 0o7777) and entry.kind != "symlink":
                cmds.append(b"set_inode_field %s mode 0%o" % (p, entry.full_mode))
            if suid != entry.uid:
                cmds.append(b"set_inode_field %s uid %d" % (p, entry.uid))
            if sgid != entry.gid:
                cmds.append(b"set_inode_field %s gid %d" % (p, entry.gid))
            if mtime % NS or smtime != mtime // NS or not 0 <= mtime < 2**31 * NS:
                cmds += _time_cmds(p, "mtime", mtime)
            if atime % NS or satime != atime // NS or not 0 <= atime < 2**31 * NS:
                cmds += _time_cmds(p, "atime", atime)
            stray = _staged_xattrs(spath)
        cmds += _time_cmds(p, "ctime", mtime)
        for name in sorted(entry.xattrs):
            value = entry.xattrs[name]
            vfile = values_dir / hashlib.sha256(value).hexdigest()
            if not vfile.exists():
                vfile.write_bytes(value)
            cmds.append(b"ea_set -f %s %s %s" % (quote(str(vfile)), p, quote(name)))
        for name in sorted(set(stray) - set(entry.xattrs)):
            cmds.append(b"ea_rm %s %s" % (p, quote(name)))
        plan.inodes.append((rel, entry.special, cmds))
    return plan


def _staged_xattrs(path: str) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []


def find_debugfs() -> str:
    """:raises NotFound: when e2fsprogs' debugfs is missing."""
    found = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
    if not found:
        raise NotFound("debugfs is not installed", "apt-get install e2fsprogs")
    return found


_BANNER = re.compile(rb"^debugfs \d+\.\d+")
_PROMPT = b"debugfs: "


def run_script(script: Script, image: Path, workdir: Path) -> None:
    """Run ``script`` against ``image`` with ``debugfs -w``.

    :raises NotFound: without debugfs.
    :raises Permanent: naming the first path a command failed for.
    """
    debugfs = find_debugfs()
    cmdfile = workdir / "debugfs.cmds"
    cmdfile.write_bytes(script.data())
    argv = [debugfs, "-w", "-f", str(cmdfile), str(image)]
    stdbuf = shutil.which("stdbuf")
    if stdbuf:  # keep stderr lines next to the command they belong to
        argv = [stdbuf, "-oL", "-eL", *argv]
    env = dict(os.environ, E2FSPROGS_FAKE_TIME="1")
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    errors: list[tuple[int, bytes]] = []
    idx = -1
    for line in proc.stdout.splitlines():
        if line.startswith(_PROMPT):
            idx += 1
        elif line.startswith(b"Allocated inode: ") or _BANNER.match(line) or not line.strip():
            continue
        else:
            errors.append((idx, line))
    if proc.returncode != 0 and not errors:
        errors.append((-1, b"debugfs exited with status %d" % proc.returncode))
    if errors:
        idx, line = errors[0]
        where = f"/{script.paths[idx]}" if stdbuf and 0 <= idx < len(script.paths) else image.name
        cmd = script.lines[idx].decode(errors="replace") if stdbuf and 0 <= idx < len(script.lines) else ""
        raise Permanent(
            f"applying image metadata failed for {where}: {line.decode(errors='replace').strip()}"
            + (f" (debugfs: {cmd})" if cmd else "")
            + (f"; {len(errors) - 1} more error(s)" if len(errors) > 1 else ""),
            "this is a bug in microagent's image build or an e2fsprogs limit; report it with the image reference",
            path=where)


def inode_map(ledger: Ledger, image: Path, workdir: Path) -> dict[str, int]:
    """Inode numbers of the ledger's staged paths in ``image``, from ``ls -p`` of every directory.

    One debugfs run lists every directory the ledger has (by path, parents
    first); a directory the image does not have lists nothing, and its
    entries are then addressed by path.  Names are raw bytes in ``ls -p``
    output, which is unambiguous because names never hold ``/`` and the
    ledger never holds a newline.
    """
    debugfs = find_debugfs()
    found: dict[str, int] = {"": 2}
    dirs = [rel for rel, entry in ledger.items() if entry.kind == "dir"]
    cmdfile = workdir / "ls.cmds"
    cmdfile.write_bytes(b"".join(b"ls -p " + image_path(d) + b"\n" for d in dirs))
    proc = subprocess.run([debugfs, "-f", str(cmdfile), str(image)], capture_output=True)
    idx = -1
    for line in proc.stdout.split(b"\n"):
        if line.startswith(_PROMPT):
            idx += 1
            continue
        fields = line.split(b"/")
        if idx < 0 or len(fields) < 7 or fields[0] != b"" or not fields[1].isdigit():
            continue
        name = os.fsdecode(fields[5])
        if name in (".", "..") or idx >= len(dirs):
            continue
        parent = dirs[idx]
        rel = f"{parent}/{name}" if parent else name
        entry = ledger.get(rel)
        if entry is None or entry.special:
            continue
        found[rel] = int(fields[1])
    return found


class MetadataPass:
    """The debugfs pass of one build: :meth:`plan` (the tree only; may run while
    mke2fs builds the image), then :meth:`apply` to the image.

    :param workdir: an empty private directory for the script and xattr values.
    """

    def __init__(self, ledger: Ledger, staging: Path, workdir: Path) -> None:
        self.ledger, self.staging, self.workdir = ledger, staging, workdir
        self._plan: Plan | None = None
        self._error: BaseException | None = None

    def plan(self) -> None:
        """Plan the commands; an error is kept for :meth:`apply` to raise (this may run in a thread)."""
        try:
            values = self.workdir / "xattr-values"
            values.mkdir(exist_ok=True)
            self._plan = plan_script(self.ledger, self.staging, values)
        except BaseException as exc:  # re-raised by apply, in the caller's thread
            self._error = exc

    def apply(self, image: Path) -> None:
        """Make ``image`` (built by ``mke2fs -d staging``) match the ledger exactly.

        :raises NotFound: without debugfs.
        :raises Permanent: when a debugfs command fails (names the path).
        """
        if self._plan is None and self._error is None:
            self.plan()
        if self._error is not None:
            raise self._error
        assert self._plan is not None
        script = render(self._plan, inode_map(self.ledger, image, self.workdir))
        run_script(script, image, self.workdir)


def apply_ledger(ledger: Ledger, staging: Path, image: Path) -> None:
    """Make ``image`` (built by ``mke2fs -d staging``) match ``ledger`` exactly.

    :raises NotFound: without debugfs.
    :raises Permanent: when a debugfs command fails (names the path).
    """
    with tempfile.TemporaryDirectory(prefix=".meta-", dir=image.parent) as tmp:
        MetadataPass(ledger, staging, Path(tmp)).apply(image)
