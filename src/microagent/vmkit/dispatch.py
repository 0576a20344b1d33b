"""Finding and running a backend's supervisor executable.

The CLI and library talk to a backend only through its supervisor: one JSON
request on stdin, one JSON response on stdout, exit 0 iff ``ok`` (docs/supervisor-api.md;
why executables: docs/architecture.md, "Layers").
Lookup order: explicit override → ``MICROAGENT_<BACKEND>_SUPERVISOR`` →
beside the running ``microagent`` → ``<prefix>/libexec`` → ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
