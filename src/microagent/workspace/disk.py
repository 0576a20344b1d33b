"""A workspace's root disk: growing its copy of the image's base disk.

The root disk (``workspaces/<name>/rootfs.ext4``) starts as a copy of the
image's base disk and is grown to the workspace's ``diskSizeMiB`` (sparse:
only written blocks take space). The per-boot config disk is written by the
supervisor at every boot (``<runtime>/config.disk``), never into the root.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from microagent.errors import NotFound, Permanent, ResourceExhausted

MIB = 1024 * 1024
CONFIG_DISK_BLOCK = 4096


def size_mib(path: Path) -> int:
    """A file's apparent size in MiB, rounded up."""
    return (path.stat().st_size + MIB - 1) // MIB


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise NotFound(f"{name} is not installed", "apt-get install e2fsprogs")
    return found


def grow_rootfs(disk: Path, size_mib_: int) -> None:
    """Grow the ext4 image ``disk`` (never mounted, not in use) to ``size_mib_`` MiB.

    A no-op when it is already that large.

    :raises NotFound: without e2fsprogs.
    :raises ResourceExhausted: when the host disk is full.
    :raises Permanent: when e2fsck or resize2fs fail.
    """
    target = size_mib_ * MIB
    if disk.stat().st_size >= target:
        return
    try:
        with open(disk, "r+b") as fh:
            fh.truncate(target)
    except OSError as exc:
        if exc.errno == 28:
            raise ResourceExhausted(f"no space left growing {disk}", "free disk space") from exc
        raise Permanent(f"cannot grow {disk}: {exc.strerror}") from exc
    fsck = subprocess.run([_tool("e2fsck"), "-f", "-p", str(disk)], capture_output=True, text=True)
    if fsck.returncode not in (0, 1):
        raise Permanent(f"e2fsck of {disk.name} failed ({fsck.returncode}): {(fsck.stderr or fsck.stdout).strip()}")
    proc = subprocess.run([_tool("resize2fs"), str(disk), f"{size_mib_}M"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Permanent(f"resize2fs of {disk.name} failed: {(proc.stderr or proc.stdout).strip()}")


