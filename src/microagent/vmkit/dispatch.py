"""Reaching a backend's supervisor: in this process, or as an executable.

Every backend speaks one contract: a JSON request in, one JSON response out
(docs/supervisor-api.md).  The Linux backends (``qemu``, ``firecracker``) are
answered by a worker forked from a single-threaded caller such as the CLI
(:func:`call_in_process`): an executable would cost a Python start-up and the
backend's imports, about 100 ms, on every ``start``, ``kill`` and ``delete``.
Apple VF and Hyper-V always run as their executables (their OS bindings load
only there), and so does every backend for a threaded caller or when its
executable is named explicitly.
Lookup order of an executable: explicit override → ``MICROAGENT_<BACKEND>_SUPERVISOR`` →
beside the running ``microagent`` → ``<prefix>/libexec`` → ``PATH``
(why executables at all: docs/architecture.md, "Layers").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from microagent.errors import MicroagentError, NotFound, Permanent, Transient
from microagent.vmkit.types import Request, Response, to_wire

SUPERVISOR_NAMES = {
    "firecracker": "microagent-firecracker-supervisor",
    "qemu": "microagent-qemu-supervisor",
    "apple-vf": "microagent-applevf-supervisor",
    "windows-hyperv": "microagent-hyperv-supervisor",
}
ENV_NAMES = {
    "firecracker": "MICROAGENT_FIRECRACKER_SUPERVISOR",
    "qemu": "MICROAGENT_QEMU_SUPERVISOR",
    "apple-vf": "MICROAGENT_APPLEVF_SUPERVISOR",
    "windows-hyperv": "MICROAGENT_HYPERV_SUPERVISOR",
}
#: backends answered in the caller's process: module and class of the backend, loaded by
#: name (the workspace layer never imports a backend; only the contract's types are shared)
IN_PROCESS = {
    "qemu": ("microagent.supervisors.qemu.backend", "QemuBackend"),
    "firecracker": ("microagent.supervisors.firecracker.backend", "FirecrackerBackend"),
}


def _cli_dir() -> Path | None:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if argv0 and Path(argv0).name.startswith("microagent"):
        return Path(argv0).resolve().parent
    return None


def find_supervisor(backend: str, override: str | None = None,
                    env: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """Locate the supervisor executable for ``backend``.

    :raises NotFound: when an explicit path is missing or nothing is found.
    """
    env = os.environ if env is None else env
    name = SUPERVISOR_NAMES[backend]
    if override:
        p = Path(override)
        if not p.is_file():
            raise NotFound(f"supervisor {override} does not exist", "fix the --supervisor path")
        return p
    from_env = env.get(ENV_NAMES[backend])
    if from_env:
        p = Path(from_env)
        if not p.is_file():
            raise NotFound(f"{ENV_NAMES[backend]} points at {from_env}, which does not exist",
                           f"unset {ENV_NAMES[backend]} or point it at {name}")
        return p
    candidates = []
    cli_dir = _cli_dir()
    if cli_dir is not None:
        candidates.append(cli_dir / name)
    candidates.append(Path(sys.prefix) / "libexec" / name)
    candidates.append(Path(sys.prefix) / "bin" / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    found = shutil.which(name, path=env.get("PATH"))
    if found:
        return Path(found)
    raise NotFound(f"supervisor {name} for backend {backend} was not found",
                   "reinstall microagent ('make install') or pass --supervisor")


def call_supervisor(executable: Path, request: Request | dict[str, Any], *,
                    timeout: float = 600.0, lock_fd: int | None = None) -> Response:
    """Run one supervisor request and decode its response (even on failure).

    ``lock_fd``: the workspace lock this process holds, handed down so the
    supervisor keeps holding it should this process die.

    :raises Transient: when the supervisor times out.
    :raises Permanent: when it cannot be run or prints no valid response.
    :raises MicroagentError: the supervisor's own error when ``ok`` is false.
    """
    payload = to_wire(request) if isinstance(request, Request) else request
    try:
        inherit: dict[str, Any] = {} if lock_fd is None else {
            "pass_fds": (lock_fd,), "env": {**os.environ, "MICROAGENT_LOCK_FD": str(lock_fd)}}
        proc = subprocess.run([str(executable)], input=json.dumps(payload), capture_output=True,
                              text=True, timeout=timeout, **inherit)
    except subprocess.TimeoutExpired as exc:
        raise Transient(f"supervisor {executable.name} did not answer within {timeout:.0f}s",
                        "check the workspace with 'microagent status'") from exc
    except OSError as exc:
        raise Permanent(f"cannot run supervisor {executable}: {exc.strerror}",
                        "reinstall microagent or fix --supervisor") from exc
    try:
        response = Response.from_json(json.loads(proc.stdout))
    except (ValueError, MicroagentError) as exc:
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        raise Permanent(
            f"supervisor {executable.name} exited {proc.returncode} without a valid response"
            + (f": {' | '.join(tail)}" if tail else ""),
            "run the supervisor by hand with the same request to see its diagnostics",
        ) from exc
    if response.ok != (proc.returncode == 0):
        raise Permanent(f"supervisor {executable.name} exited {proc.returncode} but answered ok={response.ok}")
    if not response.ok:
        raise MicroagentError.from_dict(response.error or {"message": "supervisor failed"})
    return response


def in_process(backend: str, override: str | None = None,
               env: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Whether ``backend`` is answered by a worker forked from this process: a Linux
    backend whose executable nobody named (``--supervisor``, ``MICROAGENT_<BACKEND>_SUPERVISOR``),
    called from a process with one thread (the CLI, a script). A threaded process (the
    MCP server, a Ray agent) cannot fork safely: a lock another thread held stays held
    in the child. It runs the executable, whose VMMs are not its children either (Ray
    kills an actor's child processes with it)."""
    env = os.environ if env is None else env
    return (backend in IN_PROCESS and not override and not env.get(ENV_NAMES[backend])
            and _single_threaded())


def load_backend(backend: str) -> tuple[Any, Any]:
    """Import ``backend``'s supervisor code (the first time: ~50 ms for QEMU's); returns
    its backend class and the supervisor's ``answer``. Calling it before a step that must
    not be interrupted without a worker (create's publish) narrows that window to a fork."""
    import importlib

    module, cls = IN_PROCESS[backend]
    return (getattr(importlib.import_module(module), cls),
            importlib.import_module("microagent.supervisors.base").answer)


def call_in_process(backend: str, request: Request, *, timeout: float = 600.0,
                    lock_fd: int | None = None) -> Response:
    """Answer ``request`` with ``backend``'s supervisor code, already loaded in this
    process, in a forked worker: exactly as its executable would (the request and the
    answer cross the same wire encoding, the umask is 077, every error becomes an
    answer), without an interpreter's start-up and the backend's imports.

    The worker inherits the workspace lock, so a caller killed mid-``start`` leaves
    the lock with the worker, which finishes and records the outcome; the VMM it
    spawns is reparented when it exits, as an executable's is. Only for a caller
    with one thread (:func:`in_process`).

    :raises Transient: when the worker does not answer within ``timeout``.
    :raises MicroagentError: the supervisor's own error when ``ok`` is false.
    """
    return call_each_in_process(backend, [request], timeout=timeout, lock_fd=lock_fd)[0]


def call_each_in_process(backend: str, requests: list[Request], *, timeout: float = 600.0,
                         lock_fd: int | None = None) -> list[Response]:
    """:func:`call_in_process` for several requests, answered in order by one worker
    (one fork: a one-shot run's ``kill`` and ``delete``); the first that fails ends
    the sequence, its error raised. ``timeout`` is for the whole sequence."""
    factory, answer = load_backend(backend)  # before the fork: the worker imports nothing
    raws = [json.loads(json.dumps(to_wire(request))) for request in requests]

    def work() -> list[Response]:
        answers = []
        for raw in raws:
            answers.append(answer(factory, backend, raw, lock_handed_down=lock_fd is not None))
            if not answers[-1].ok:
                break
        return answers

    responses = []
    for doc in _answer_in_child(work, backend, timeout, lock_fd):
        response = Response.from_json(doc)  # decoded from the worker's JSON, as an executable's
        if not response.ok:
            raise MicroagentError.from_dict(response.error or {"message": "supervisor failed"})
        responses.append(response)
    return responses


#: how long a thread threading reports ended may still be listed as exiting (microseconds, usually)
THREAD_EXIT_SETTLE_S = 0.05


def _single_threaded() -> bool:
    """One thread in ``/proc/self/task`` (every thread, not only threading's). A thread
    threading counts as ended (joined) may be listed a moment longer while its OS thread
    exits: with no other of threading's threads alive, that is waited out, briefly."""
    deadline = time.monotonic() + THREAD_EXIT_SETTLE_S
    while True:
        try:
            if len(os.listdir("/proc/self/task")) == 1:
                return True
        except OSError:
            return False
        threading = sys.modules.get("threading")  # never imported: no thread of threading's to wait out
        if threading is None or threading.active_count() > 1 or time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)


def _answer_in_child(work: Any, backend: str, timeout: float, lock_fd: int | None) -> list[dict[str, Any]]:
    """Fork, run ``work`` in the child, and read its answers back over a pipe."""
    import select
    import signal

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: never returns into the caller's code
        status = 1
        try:
            os.close(read_end)
            os.umask(0o077)
            if lock_fd is not None:  # answer() adopts it: closed on exec, the record names us
                os.environ["MICROAGENT_LOCK_FD"] = str(lock_fd)
            responses = work()
            with os.fdopen(write_end, "w", encoding="utf-8") as out:
                json.dump([response.to_json() for response in responses], out)
            status = 0 if all(response.ok for response in responses) else 1
        except BaseException:  # noqa: BLE001 - a caller that went away (EPIPE) or a bug: just end
            pass
        finally:
            os._exit(status)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise Transient(f"the {backend} supervisor did not answer within {timeout:.0f}s",
                                "check the workspace with 'microagent status'")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    try:
        doc = json.loads(b"".join(chunks))
        if not isinstance(doc, list) or not doc or not all(isinstance(d, dict) for d in doc):
            raise ValueError("not a list of objects")
    except ValueError as exc:
        raise Permanent(f"the {backend} supervisor's worker (pid {pid}) ended without an answer",
                        "see the traceback above; this is a bug in microagent") from exc
    return doc
