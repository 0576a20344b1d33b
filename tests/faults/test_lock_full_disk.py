"""Taking a workspace lock and recording a state need no free space.

A full host disk must not keep ``kill`` or ``delete -f`` from running: the
lock record goes into the slot the lock file already has, and state records
overwrite their files in place or are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from microagent.runtime_state import RuntimeDir
from microagent.vmkit.types import Identity
from microagent.workspace.lock import WorkspaceLock


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(root: Path) -> None:
    fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (root / "probe").write_bytes(b"x" * 8192)


def test_lock_is_taken_on_a_full_disk(small_fs: Path) -> None:
    with WorkspaceLock(small_fs, "ws", "start"):
        pass
    _fill(small_fs)
    with WorkspaceLock(small_fs, "ws", "kill") as lock:
        assert lock.holder()["command"] == "kill"  # written in the slot the file kept
    assert WorkspaceLock(small_fs, "ws", "x").holder() == {}
    with WorkspaceLock(small_fs, "other", "delete", timeout=0):  # a new lock file: no record, still a lock
        pass


def test_state_records_survive_a_full_disk(small_fs: Path) -> None:
    rt = RuntimeDir(small_fs / "run" / "ws")
    ident = Identity(requestID="r", runtimeID="ws", role="workload", backend="qemu")
    rt.record(ident, "running", "booted", pid=1, argv=["x"] * 20)
    _fill(small_fs)
    event = rt.record(ident, "stopped", "SIGKILL")  # fits the blocks the files have: written in place
    assert event.state == "stopped"
    assert json.loads(rt.runtime_json.read_text())["state"] == "stopped"
    assert json.loads(rt.event_json.read_text())["state"] == "stopped"
    big = ["x" * 100] * 200  # cannot fit: strict raises, best effort skips and says so
    with pytest.raises(OSError):
        rt.record(ident, "failed", "later", argv=big)
    rt.record(ident, "failed", "later", best_effort=True, argv=big)
    assert json.loads(rt.runtime_json.read_text())["state"] == "stopped"
    assert not [p for p in rt.path.iterdir() if p.name.endswith(".tmp")]
