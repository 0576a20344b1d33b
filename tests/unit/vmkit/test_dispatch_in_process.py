"""The Linux backends answered in the caller's process: the same answers as their
executables, the workspace lock left with the forked worker, and a worker that
hangs or dies reported, not waited on forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microagent.errors import NotFound, Permanent, Transient
from microagent.supervisors.base import Backend
from microagent.vmkit import dispatch
from microagent.vmkit.types import Config, Identity, Request, Response, to_wire
from microagent.workspace.lock import WorkspaceLock, held_fd, lock_path


def _request(root: Path, command: str = "inspect", name: str = "nope") -> Request:
    return Request(command=command, identity=Identity(requestID="r1", runtimeID=name, role="workload", backend="qemu"),
                   config=Config(stateDir=str(root)))


# The forked-worker tests below fork this test process, whatever threads it has:
# their backends only sleep, exit or read a file, with everything imported before.


class SlowBackend(Backend):
    name = "qemu"

    def inspect(self, request: Request) -> Response:
        time.sleep(30)
        raise AssertionError("not reached")


class DyingBackend(Backend):
    name = "qemu"

    def inspect(self, request: Request) -> Response:
        os._exit(3)


class LockReadingBackend(Backend):
    """Answers with the lock file's holder record, as the worker sees it."""

    name = "qemu"

    def inspect(self, request: Request) -> Response:
        path = lock_path(Path(request.config.stateDir), request.identity.runtimeID)
        record = json.loads(path.read_bytes()[:512].decode().strip())
        return Response(ok=True, backend="qemu", runtime={"holder": record, "worker": os.getpid(),
                                                         "umask": _umask()})


def _umask() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))


def test_linux_backends_are_answered_in_process_unless_an_executable_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_single_threaded", lambda: True)
    assert dispatch.in_process("qemu", None, {}) and dispatch.in_process("firecracker", None, {})
    assert not dispatch.in_process("qemu", "/usr/local/bin/my-supervisor", {})
    assert not dispatch.in_process("qemu", None, {"MICROAGENT_QEMU_SUPERVISOR": "/x"})
    assert not dispatch.in_process("apple-vf", None, {}) and not dispatch.in_process("windows-hyperv", None, {})
    monkeypatch.setattr(dispatch, "_single_threaded", lambda: False)
    assert not dispatch.in_process("qemu", None, {})


def test_the_answer_is_the_executables(tmp_path: Path) -> None:
    request = _request(tmp_path)
    with pytest.raises(NotFound) as in_process:
        dispatch.call_in_process("qemu", request)
    exe = Path(sys.executable).parent / "microagent-qemu-supervisor"
    proc = subprocess.run([str(exe)], input=json.dumps(to_wire(request)), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"] == in_process.value.to_dict()


def test_the_forked_worker_holds_the_callers_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.IN_PROCESS, "qemu", (__name__, "LockReadingBackend"))
    with WorkspaceLock(tmp_path, "ws", "start"):
        fd = held_fd(tmp_path, "ws")
        assert fd is not None
        resp = dispatch.call_in_process("qemu", _request(tmp_path, name="ws"), lock_fd=fd)
    runtime = resp.runtime or {}
    assert runtime["worker"] != os.getpid()  # a child did the work
    assert runtime["holder"]["pid"] == runtime["worker"], runtime  # and the lock names it
    assert runtime["holder"]["command"] == "inspect (supervisor)"
    assert runtime["umask"] == 0o077


class TwoStepBackend(Backend):
    """``inspect`` answers with the worker's pid; ``kill`` fails; ``delete`` records that it ran."""

    name = "qemu"

    def inspect(self, request: Request) -> Response:
        return Response(ok=True, backend="qemu", runtime={"worker": os.getpid(), "command": "inspect"})

    def kill(self, request: Request) -> Response:
        raise Permanent("kill refused here")

    def delete(self, request: Request) -> Response:
        (Path(request.config.stateDir) / "deleted").write_text(str(os.getpid()))
        return Response(ok=True, backend="qemu", runtime={"worker": os.getpid(), "command": "delete"})


def test_one_worker_answers_a_sequence_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.IN_PROCESS, "qemu", (__name__, "TwoStepBackend"))
    answers = dispatch.call_each_in_process("qemu", [_request(tmp_path, "inspect"), _request(tmp_path, "delete")])
    runtimes = [a.runtime or {} for a in answers]
    assert [r["command"] for r in runtimes] == ["inspect", "delete"]
    assert runtimes[0]["worker"] == runtimes[1]["worker"] != os.getpid()  # one fork for both


def test_a_failed_step_ends_the_sequence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.IN_PROCESS, "qemu", (__name__, "TwoStepBackend"))
    with pytest.raises(Permanent, match="kill refused here"):
        dispatch.call_each_in_process("qemu", [_request(tmp_path, "kill"), _request(tmp_path, "delete")])
    assert not (tmp_path / "deleted").exists(), "the step after a failure must not run"


def _in_a_fresh_interpreter(code: str) -> list[str]:
    """What ``code`` prints, run by a new Python: this test process may have threads of its own."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_a_threaded_caller_runs_the_executable() -> None:
    """Forking a threaded process is unsafe (a lock another thread holds stays held in
    the child), and a VMM spawned in it would be its child (Ray kills those with an actor)."""
    code = ("import threading\n"
            "from microagent.vmkit import dispatch\n"
            "alone = dispatch.in_process('qemu', None, {})\n"
            "stop = threading.Event(); t = threading.Thread(target=stop.wait); t.start()\n"
            "threaded = dispatch.in_process('qemu', None, {})\n"
            "stop.set(); t.join()\n"
            "print(alone, threaded)")
    assert _in_a_fresh_interpreter(code) == ["True", "False"]


def test_a_thread_that_has_ended_does_not_count() -> None:
    """A joined thread may still be listed in /proc/self/task for a moment (its OS thread
    is still exiting); that must not send the next call to the executable (~100 ms more)."""
    code = ("import threading\n"
            "from microagent.vmkit import dispatch\n"
            "forked = 0\n"
            "for _ in range(300):\n"
            "    t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
            "    forked += dispatch.in_process('qemu', None, {})\n"
            "print(forked)")
    assert _in_a_fresh_interpreter(code) == ["300"]


def test_a_worker_that_does_not_answer_in_time_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.IN_PROCESS, "qemu", (__name__, "SlowBackend"))
    started = time.monotonic()
    with pytest.raises(Transient, match="did not answer within"):
        dispatch.call_in_process("qemu", _request(tmp_path), timeout=0.5)
    assert time.monotonic() - started < 10


def test_a_worker_that_dies_without_an_answer_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.IN_PROCESS, "qemu", (__name__, "DyingBackend"))
    with pytest.raises(Permanent, match="ended without an answer"):
        dispatch.call_in_process("qemu", _request(tmp_path))
