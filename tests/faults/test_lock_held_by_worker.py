"""The workspace lock is held by whoever does the work.

A CLI killed with SIGKILL while its supervisor boots the VM must not free
the workspace for another mutating command: the supervisor (the CLI's forked
worker for a Linux backend, else the executable) inherited the lock and keeps
it until it has finished; then the state is consistent.
"""

from __future__ import annotations

import signal
import time

from fault_support import Faults, _descendants


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _supervisors(cli_pid: int) -> list[int]:
    """Supervisor executables, or workers forked from the CLI (its own command line)."""
    cli = _cmdline(cli_pid)
    return [pid for pid in _descendants(cli_pid)
            if b"supervisor" in _cmdline(pid) or (cli and _cmdline(pid) == cli)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_start_leaves_the_lock_with_its_supervisor(faults: Faults) -> None:
    code, doc = faults.run("create", "ws", timeout=300)
    assert code == 0, doc
    proc = faults.spawn("start", "ws")
    qemu_pid = faults.root / "run" / "ws" / "qemu.pid"
    deadline = time.monotonic() + 60
    supervisors: list[int] = []
    while not qemu_pid.exists():  # the VMM has spawned; the supervisor now waits for the guest
        assert proc.poll() is None and time.monotonic() < deadline, "start ended before the VMM spawned"
        supervisors = _supervisors(proc.pid) or supervisors
        time.sleep(0.005)
    supervisors = _supervisors(proc.pid) or supervisors
    assert supervisors, "no supervisor process under the CLI"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    faults.env["MICROAGENT_LOCK_TIMEOUT"] = "0.2"
    code, doc = faults.run("kill", "ws")
    assert code != 0 and doc["error"]["kind"] == "conflict", doc  # not a kill behind the boot's back
    assert any(_alive(pid) for pid in supervisors), "the supervisor finished before the check"
    assert "supervisor" in doc["error"]["message"], doc  # the holder named is the one doing the work

    deadline = time.monotonic() + 90
    while any(_alive(pid) for pid in supervisors):
        assert time.monotonic() < deadline, "the supervisor never finished"
        time.sleep(0.05)
    status = faults.check_reconciled("ws")
    assert status["state"] == "running" and status["alive"], status
    code, doc = faults.run("kill", "ws")
    assert code == 0, doc
    code, doc = faults.run("delete", "ws")
    assert code == 0 and doc["deleted"], doc
    faults.check_clean()
