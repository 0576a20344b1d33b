"""Contract harness: the real ``microagent-firecracker-supervisor`` executable on this host.

Foreign OS: the executable's code with ``sys.platform`` set to ``darwin``.
Not live here: a firecracker start needs a vmlinux ELF kernel (and hardware
KVM for a guest); ``tests/firecracker/`` covers its process model.
"""

from __future__ import annotations

import sys
from typing import Any

from contract.base import Harness, executable, run_executable

FOREIGN = ("import sys; sys.platform = 'darwin'; sys.argv = ['microagent-firecracker-supervisor']; "
           "from microagent.supervisors.firecracker.main import main; main()")


class FirecrackerHarness(Harness):
    name = "firecracker"
    host_os = "linux"
    live = False
    live_reason = "needs the firecracker kernel (vmlinux ELF); tests/firecracker/ covers the process model"

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        return run_executable([executable("microagent-firecracker-supervisor")], request)

    def call_on_foreign_os(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        return "darwin", run_executable([sys.executable, "-c", FOREIGN], request)


HARNESS = FirecrackerHarness
