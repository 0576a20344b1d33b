"""VMM processes: spawn detached, identify without PID-reuse mistakes, signal.

A recorded process is ``(pid, starttime)``; ``starttime`` is field 22 of
``/proc/<pid>/stat`` (clock ticks since boot) on Linux and the libproc start
time on macOS, so a recycled PID never passes for our VMM.
"""

from __future__ import annotations

import os
import sys

from microagent.errors import Permanent

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported where a process is spawned: exec's liveness check needs only /proc
    import signal
    import subprocess
    from pathlib import Path


class ProcessRef:
    """A recorded process. Immutable; a plain class, not a dataclass: exec's
    liveness check would pay for importing dataclasses (and inspect)."""

    __slots__ = ("pid", "starttime")
    pid: int
    starttime: int

    def __init__(self, pid: int, starttime: int) -> None:
        object.__setattr__(self, "pid", pid)
        object.__setattr__(self, "starttime", starttime)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.pid, self.starttime) == (other.pid, other.starttime)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.pid, self.starttime))

    def __repr__(self) -> str:
        return f"ProcessRef(pid={self.pid!r}, starttime={self.starttime!r})"

    def __reduce__(self) -> tuple[type[ProcessRef], tuple[int, int]]:  # pickle and copy, despite __setattr__
        return ProcessRef, (self.pid, self.starttime)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "starttime": self.starttime}


def _starttime(pid: int) -> int | None:
    if sys.platform == "darwin":
        from microagent.host.darwin_process import starttime

        return starttime(pid)
    return _linux_starttime(pid)


def _linux_starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        if fields[0] == "Z":
            return None  # a zombie has exited; only its parent's wait is missing
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def ref_for(pid: int) -> ProcessRef:
    st = _starttime(pid)
    if st is None:
        raise Permanent(f"process {pid} exited before it could be recorded")
    return ProcessRef(pid, st)


def is_alive(ref: ProcessRef) -> bool:
    """Whether the recorded process still runs (and is the same process)."""
    return _starttime(ref.pid) == ref.starttime


def spawn_detached(argv: list[str], *, cwd: Path, log_path: Path,
                   pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session so it outlives the supervisor.

    :raises Permanent: when the executable cannot be started.
    """
    import subprocess

    log = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True, pass_fds=pass_fds)
    except OSError as exc:
        raise Permanent(f"cannot start {argv[0]}: {exc.strerror}") from exc
    finally:
        log.close()


def reap_if_child(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child (avoids zombies)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(ref: ProcessRef, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process to exit: woken by its exit through
    a pidfd where there is one (Linux), polled elsewhere. A process that is not our
    child (a VMM left to init) has no wait(2) to block on, but it has a pidfd."""
    import time

    def gone() -> bool:
        reap_if_child(ref.pid)
        return not is_alive(ref)

    pidfd = _pidfd(ref.pid)
    if pidfd is None:
        from microagent.waiting import wait_until

        return bool(wait_until(gone, timeout, 0.02))
    import select

    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while not gone():  # checked after the open: the pidfd is of the recorded process
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(left * 1000) and not gone():
                time.sleep(0.005)  # readable while /proc still shows it (its threads exiting): no spin
        return True
    finally:
        os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (Linux 5.3+); ``None`` without (the caller polls)."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # gone already (the caller sees it), or no pidfds here
        return None


def send_signal(ref: ProcessRef, sig: signal.Signals) -> bool:
    """Signal the process if it is still ours; False when it is already gone."""
    if not is_alive(ref):
        return False
    try:
        os.kill(ref.pid, sig)
    except ProcessLookupError:
        return False
    return True
