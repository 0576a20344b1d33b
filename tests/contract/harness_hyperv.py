"""Contract harness: the real Hyper-V backend class in-process, against ``FakeHcs``.

``call`` runs :class:`~microagent.supervisors.hyperv.backend.HyperVBackend`
with the recording fakes of ``tests/hyperv/fake_hcs.py`` (NOT the Host
Compute Service) in place of ``computecore.dll``/``computenetwork.dll`` and
of the helper process.  Foreign OS: the real ``microagent-hyperv-supervisor``
executable on this Linux host.  Live: yes, against the fake.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from applevf.harness import invoke
from contract.base import Harness, executable, run_executable
from hyperv.fake_hcs import FakeHcs, FakeHelpers
from microagent.images.ext4 import build_ext4


class HyperVHarness(Harness):
    name = "windows-hyperv"
    host_os = "windows"
    live = True
    live_reason = ""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        from microagent.supervisors.hyperv.backend import HyperVBackend

        tree = tmp_path / "tree"
        (tree / "etc").mkdir(parents=True)
        build_ext4(tree, self.files / "rootfs.ext4", key="contract-hyperv", size_bytes=16 * 2**20)
        self.backend = HyperVBackend(hcs=FakeHcs(), helpers=FakeHelpers())

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        return invoke(self.backend, request)

    def call_on_foreign_os(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        if not sys.platform.startswith("linux"):
            return None
        return "linux", run_executable([executable("microagent-hyperv-supervisor")], request)


HARNESS = HyperVHarness
