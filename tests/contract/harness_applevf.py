"""Contract harness: the real apple-vf backend class in-process, against ``FakeVirtualization``.

``call`` runs :class:`~microagent.supervisors.applevf.backend.AppleVFBackend`
here (its vmhost is the real vmhost process over the fake, its guest the
real guest init in agent mode: see ``tests/applevf/``).  Foreign OS: the real
``microagent-applevf-supervisor`` executable on this Linux host.  Live: yes,
against the fake (not Virtualization.framework).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from applevf.harness import FAKE_VMHOST, AppleVF, VMFiles, find_guest_init, invoke, kill_leftovers
from contract.base import Harness, executable, run_executable


class AppleVFHarness(Harness):
    name = "apple-vf"
    host_os = "darwin"

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        guest = find_guest_init()
        command = [sys.executable, str(FAKE_VMHOST)] + (["--guest-init", str(guest)] if guest else [])
        self.live = guest is not None
        self.live_reason = "" if guest else "guest init is not built; run 'make guest'"
        self.impl = AppleVF(self.state_dir, VMFiles.create(self.files), command)

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        return invoke(self.impl.backend, request)

    def call_on_foreign_os(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        if not sys.platform.startswith("linux"):
            return None
        return "linux", run_executable([executable("microagent-applevf-supervisor")], request)

    def close(self) -> None:
        kill_leftovers(str(self.state_dir))


HARNESS = AppleVFHarness
