"""Contract harness: the real ``microagent-qemu-supervisor`` executable on this host.

Foreign OS: the same executable's code with ``sys.platform`` set to
``darwin`` before it runs (its host checks read it at call time).  Not live:
a real QEMU boot is what ``tests/vm/`` does.
"""

from __future__ import annotations

import sys
from typing import Any

from contract.base import Harness, executable, run_executable

FOREIGN = ("import sys, json; sys.platform = 'darwin'; sys.argv = ['microagent-qemu-supervisor']; "
           "from microagent.supervisors.qemu.main import main; main()")


class QemuHarness(Harness):
    name = "qemu"
    host_os = "linux"
    live = False
    live_reason = "a qemu boot is covered by tests/vm/ (real guest boots)"

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        return run_executable([executable("microagent-qemu-supervisor")], request)

    def call_on_foreign_os(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        return "darwin", run_executable([sys.executable, "-c", FOREIGN], request)


HARNESS = QemuHarness
