"""Where a QEMU guest's RAM file lives: on tmpfs, named from the run directory.

Guest RAM is a ``memory-backend-file`` so a snapshot can copy it
(:mod:`.snapshot`).  On the state directory's disk filesystem every first
touch of a guest page allocates a block and dirty pages are written back:
boots measured ~0.7 s slower here.  On tmpfs (``/dev/shm``) the file costs
what anonymous RAM costs.  It sits in a 0700 directory of the user's, named
by a hash of the run directory, and ``<run>/ram`` links to it so every
command finds it; without a usable ``/dev/shm`` it is ``<run>/ram`` itself.

A run directory removed without its VM's teardown leaves its file behind;
``gc`` reaps files there that no process of this user maps or holds open
(:func:`reap_orphans`).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

from microagent.errors import PolicyDenied

RAM_LINK = "ram"
TMPFS = Path("/dev/shm")


def private_tmpfs_dir() -> Path | None:
    if not TMPFS.is_dir() or not os.access(TMPFS, os.W_OK):
        return None
    path = TMPFS / f"microagent-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PolicyDenied(f"{path} is not a private directory of this user",
                           f"remove {path} (another user may have planted it)")
    return path


def create(run_dir: Path) -> Path:
    """A fresh empty RAM file (0600) for the VM of ``run_dir`` (QEMU sizes it); returns its path."""
    release(run_dir)
    tmpfs = private_tmpfs_dir()
    path = run_dir / RAM_LINK
    if tmpfs is not None:
        path = tmpfs / (hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:24] + ".ram")
        path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
    if path != run_dir / RAM_LINK:
        os.symlink(path, run_dir / RAM_LINK)
    return path


def find(run_dir: Path) -> Path | None:
    """The RAM file of ``run_dir``'s VM, if it has one."""
    link = run_dir / RAM_LINK
    target = Path(os.readlink(link)) if link.is_symlink() else link
    return target if target.is_file() else None


def release(run_dir: Path) -> None:
    """Remove the RAM file and its link (a live VM keeps its mapping)."""
    link = run_dir / RAM_LINK
    if link.is_symlink():
        target = Path(os.readlink(link))
        if target.parent.name == f"microagent-{os.getuid()}" and target.parent.parent == TMPFS:
            target.unlink(missing_ok=True)
    link.unlink(missing_ok=True)


#: A file this young may be one whose VMM is still starting (created, not yet mapped).
ORPHAN_MIN_AGE_S = 300.0


def _paths_in_use(directory: Path) -> set[str]:
    """Files under ``directory`` that a process of this user maps or holds open."""
    prefix = f"{directory}/"
    used: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                used.update(line.split(None, 5)[5].strip() for line in maps
                            if prefix in line and len(line.split(None, 5)) == 6)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix):
                    used.add(target)
        except OSError:  # gone, or another user's process (whose files are not in our 0700 dir)
            continue
    return {p.removesuffix(" (deleted)") for p in used}


def reap_orphans(min_age_s: float = ORPHAN_MIN_AGE_S, directory: Path | None = None) -> list[str]:
    """Remove this user's RAM files that no process uses and that are older than ``min_age_s``.

    Safe across state roots: a live VM of any root maps its file.  Returns the removed paths.

    :param directory: the tmpfs directory to sweep (default: this user's).
    """
    directory = directory or TMPFS / f"microagent-{os.getuid()}"
    if not directory.is_dir():
        return []
    used, now, removed = _paths_in_use(directory), time.time(), []
    for entry in os.scandir(directory):
        if not entry.name.endswith(".ram") or entry.path in used:
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= min_age_s:
            os.unlink(entry.path)
            removed.append(entry.path)
    return removed
