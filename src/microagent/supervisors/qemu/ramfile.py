"""Where a QEMU guest's RAM file lives: on tmpfs, named from the run directory.

Guest RAM is a ``memory-backend-file`` so a snapshot can copy it
(:mod:`.snapshot`).  On the state directory's disk filesystem every first
touch of a guest page allocates a block and dirty pages are written back:
boots measured ~0.7 s slower here.  On tmpfs (``/dev/shm``) the file costs
what anonymous RAM costs.  It sits in a 0700 directory of the user's, named
by a hash of the run directory, and ``<run>/ram`` links to it so every
command finds it; without a usable ``/dev/shm`` it is ``<run>/ram`` itself.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from microagent.errors import PolicyDenied

RAM_LINK = "ram"
TMPFS = Path("/dev/shm")


def _private_tmpfs_dir() -> Path | None:
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
    tmpfs = _private_tmpfs_dir()
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
