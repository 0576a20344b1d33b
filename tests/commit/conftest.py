"""Commit tests: a real registry on 127.0.0.1, and a private state root for the QEMU guests
(the ``test_vm_*`` modules are marked ``vm``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from support import private_state_root
from support_registry import AUTH_USER, RegistryServer


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
    with private_state_root(tmp_path_factory.mktemp("commitstate")) as root:
        yield root
