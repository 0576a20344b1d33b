"""Crafted ext4 disks for the commit tests: ``mke2fs -d`` from a tree, then edits with ``debugfs -w``
(which, unlike a mount, can write names no kernel would: slashes, ``..``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert found, f"{name} is missing: apt-get install e2fsprogs (make install adds it)"
    return found


def make_disk(tree: Path, out: Path, size_mib: int = 16) -> Path:
    subprocess.run([tool("mke2fs"), "-q", "-t", "ext4", "-b", "4096", "-d", str(tree), str(out), f"{size_mib}M"],
                   check=True, env={"E2FSPROGS_FAKE_TIME": "1700000000", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return out


def debugfs_write(disk: Path, *commands: str, when: int = 1800000000) -> str:
    """Run debugfs commands read-write at time ``when`` (later than any file of the tree, as a
    guest's edits are); returns the output (debugfs exits 0 on command errors).  Unlike the
    kernel, debugfs leaves the times of the directories it links into as they were."""
    script = disk.parent / "edit.cmds"
    script.write_text("".join(c + "\n" for c in commands))
    proc = subprocess.run([tool("debugfs"), "-w", "-f", str(script), str(disk)], capture_output=True, text=True,
                          check=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": str(when)})
    return proc.stdout + proc.stderr
