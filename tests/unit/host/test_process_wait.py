"""wait_gone: woken by the process's exit (a pidfd on Linux), for a child and for a process
that is not ours to wait for (a VMM the supervisor's worker left to init)."""

from __future__ import annotations

import os
import signal
import subprocess

from microagent.host.process import ProcessRef, is_alive, ref_for, wait_gone


def test_a_killed_child_is_gone_and_reaped() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    ref = ref_for(proc.pid)
    assert not wait_gone(ref, 0.05), "a running process is not gone"
    os.kill(proc.pid, signal.SIGKILL)
    assert wait_gone(ref, 10)
    assert not is_alive(ref)
    assert not os.path.exists(f"/proc/{proc.pid}"), "the zombie was reaped"


def test_a_process_of_someone_else_is_waited_for() -> None:
    """A grandchild (its parent exits: reparented, as a VMM is): no wait(2) can see it."""
    out = subprocess.run(["sh", "-c", "setsid sleep 30 >/dev/null 2>&1 & echo $!"], capture_output=True,
                         text=True, check=True).stdout
    ref = ref_for(int(out))
    try:
        assert not wait_gone(ref, 0.05)
        os.kill(ref.pid, signal.SIGKILL)
        assert wait_gone(ref, 10)
    finally:
        if is_alive(ref):
            os.kill(ref.pid, signal.SIGKILL)


def test_a_recycled_pid_is_gone_at_once() -> None:
    me = ref_for(os.getpid())
    assert wait_gone(ProcessRef(me.pid, me.starttime + 1), 30)  # returns now, not after 30 s
    assert not wait_gone(me, 0)
