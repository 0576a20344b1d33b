"""A private state root for tests that boot real QEMU guests (``test_vm_*``, marked ``vm``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from microagent.paths import host_arch, kernel_dir, state_root
from support import vmm_processes


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/test_vm_" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="module")
def vm_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed (run 'make install')")
    root = tmp_path_factory.mktemp("svcstate")
    src = kernel_dir(state_root(None), "qemu", host_arch())
    dst = kernel_dir(root, "qemu", host_arch())
    if (src / "kernel.json").is_file():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("initramfs-*"))
    else:
        from microagent.kernels import install_kernel

        install_kernel(root, "qemu")
    old = os.environ.get("MICROAGENT_STATE_DIR")
    os.environ["MICROAGENT_STATE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("MICROAGENT_STATE_DIR", None)
    else:
        os.environ["MICROAGENT_STATE_DIR"] = old
    leaked = vmm_processes(str(root))
    for line in leaked:
        try:
            os.kill(int(line.split()[0]), 9)
        except (ProcessLookupError, ValueError):
            pass
    assert leaked == [], f"VMM processes left running: {leaked}"
