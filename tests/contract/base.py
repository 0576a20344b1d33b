"""The harness interface of the backend-neutral contract suite (imported as ``contract.base``).

One ``tests/contract/harness_<backend>.py`` per backend defines ``HARNESS``,
a subclass of :class:`Harness`; ``conftest.py`` collects them all and every
test in ``test_contract.py`` runs once per harness.  See README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


class Harness:
    """How the contract suite reaches one backend.

    :cvar name: the backend name (``identity.backend``, ``Response.backend``).
    :cvar host_os: the OS the backend runs on (``linux``, ``darwin``, ``windows``).
    :cvar live: whether :meth:`call` can really start a workspace here
        (``start``/``stop``/``delete`` of the live case); ``live_reason`` says why not.
    :param tmp_path: a fresh directory for this test (state directory, files).
    """

    name = ""
    host_os = ""
    live = False
    live_reason = ""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.files = tmp_path / "files"
        self.files.mkdir(exist_ok=True)
        for name in ("Image", "initramfs.cpio", "rootfs.ext4"):
            (self.files / name).write_bytes(b"\0" * 4096)

    # --- what a harness must provide ----------------------------------------------

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; return the response document the supervisor would print."""
        raise NotImplementedError

    def call_on_foreign_os(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The answer on a host OS that is not the backend's: ``(that os, response)``,
        or None when this harness cannot produce one."""
        return None

    def live_config(self) -> dict[str, Any]:
        """Config overrides for the live case (e.g. ``{"readiness": "vmm"}``)."""
        return {}

    def close(self) -> None:
        """Tear down whatever the test left (processes under ``state_dir``)."""

    # --- shared helpers ------------------------------------------------------------

    def config(self, *, full: bool = True, **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {"stateDir": str(self.state_dir)}
        if full:
            cfg.update(kernelPath=str(self.files / "Image"), initrdPath=str(self.files / "initramfs.cpio"),
                       rootfsPath=str(self.files / "rootfs.ext4"), memoryMiB=256, cpuCount=1, timeoutSeconds=20)
        cfg.update(overrides)
        return cfg

    def request(self, command: str, name: str = "ws1", **overrides: Any) -> dict[str, Any]:
        if command == "host":
            return {"command": "host"}
        return {"command": command,
                "identity": {"requestID": "contract", "runtimeID": name, "role": "workload", "backend": self.name},
                "config": self.config(full=command in ("check", "prepare", "start", "run"), **overrides)}


def run_executable(argv: list[str], request: dict[str, Any], env: dict[str, str] | None = None,
                   timeout: float = 60) -> dict[str, Any]:
    """Run a supervisor executable with ``request`` on stdin; its stdout document.

    Also checks the executable frame: exit status 0 iff ``ok``, no traceback on stdout.
    """
    done = subprocess.run(argv, input=json.dumps(request), capture_output=True, text=True, timeout=timeout,
                          env=env)
    answer: dict[str, Any] = json.loads(done.stdout)
    assert (done.returncode == 0) == bool(answer.get("ok")), (argv, done.returncode, answer)
    return answer


def executable(name: str) -> str:
    return str(Path(sys.executable).parent / name)
