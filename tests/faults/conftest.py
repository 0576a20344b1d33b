"""Fault injection against real processes: a SIGKILLed CLI, racing commands.

Each test gets its own state root (the kernel copied in), runs the real
``microagent`` executable (:class:`fault_support.Faults`), kills it with
SIGKILL at a chosen point, and then checks the state is reconciled with the
process table, nothing leaked, and the next command works. Every test here
uses QEMU, so all are marked ``vm``.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

import pytest

from fault_support import Faults
from microagent.paths import host_arch, kernel_dir, state_root
from support import vmm_processes


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[Faults]:
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed (run 'make install')")
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if not (src / "kernel.json").is_file():
        pytest.skip("no qemu kernel in the default state root (run 'make install')")
    root = tmp_path / "state"
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    f = Faults(root)
    yield f
    leaked = vmm_processes(str(root))
    for line in leaked:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    assert leaked == [], f"processes left running: {leaked}"
