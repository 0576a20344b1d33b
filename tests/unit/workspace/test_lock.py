"""The per-workspace lock: two processes contending."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from microagent.errors import Conflict
from microagent.workspace.lock import WorkspaceLock, lock_path

HOLDER = """
import sys, time
from pathlib import Path
from microagent.workspace.lock import WorkspaceLock
with WorkspaceLock(Path(sys.argv[1]), "ws1", "start"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(root: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_gives_up_with_conflict_naming_the_holder(tmp_path: Path) -> None:
    holder = _hold(tmp_path, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(Conflict) as info:
            with WorkspaceLock(tmp_path, "ws1", "halt", timeout=0.3):
                pass
        assert 0.3 <= time.monotonic() - t0 < 5
        msg = info.value.message
        assert "workspace ws1 is busy" in msg and "'start'" in msg and f"pid {holder.pid}" in msg
        assert info.value.details["holder"]["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the dead holder
    with WorkspaceLock(tmp_path, "ws1", "halt", timeout=1):
        pass


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path: Path) -> None:
    holder = _hold(tmp_path, 0.5)
    try:
        with WorkspaceLock(tmp_path, "ws1", "stop", timeout=10) as lock:
            assert lock.holder()["command"] == "stop"
    finally:
        holder.wait()


def test_different_workspaces_do_not_contend(tmp_path: Path) -> None:
    holder = _hold(tmp_path, 30)
    try:
        with WorkspaceLock(tmp_path, "ws2", "start", timeout=0.1):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_unlink_on_release_and_relock(tmp_path: Path) -> None:
    lock = WorkspaceLock(tmp_path, "ws1", "delete", timeout=1)
    with lock:
        lock.unlink_on_release = True
    assert not lock_path(tmp_path, "ws1").exists()
    with WorkspaceLock(tmp_path, "ws1", "create", timeout=1):
        assert lock_path(tmp_path, "ws1").exists()
