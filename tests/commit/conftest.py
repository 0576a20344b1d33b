"""Commit tests: a real registry on 127.0.0.1, and a private state root for the QEMU guests
(the ``test_vm_*`` modules are marked ``vm``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from microagent.paths import host_arch, kernel_dir, state_root
from support import vmm_processes
from support_registry import AUTH_USER, RegistryServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/commit/test_vm_" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed; run scripts/host-deps.sh (make install)")
    with RegistryServer(tmp_path_factory.mktemp("commit-registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed; run scripts/host-deps.sh (make install)")
    with RegistryServer(tmp_path_factory.mktemp("commit-auth-registry"), htpasswd=AUTH_USER) as reg:
        yield reg


@pytest.fixture(scope="module")
def vm_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed (run 'make install')")
    root = tmp_path_factory.mktemp("commitstate")
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
