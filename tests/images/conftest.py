"""Registry fixtures: real ``docker-registry`` instances on 127.0.0.1 for the session."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from support_registry import AUTH_USER, RegistryServer




def _need_registry() -> None:
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed; run scripts/host-deps.sh (make install)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An anonymous registry (CNCF distribution 2.8 from Debian)."""
    _need_registry()
    with RegistryServer(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry behind htpasswd basic auth (user/password in ``AUTH_USER``)."""
    _need_registry()
    with RegistryServer(tmp_path_factory.mktemp("auth-registry"), htpasswd=AUTH_USER) as reg:
        yield reg


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state root; no auth file from the real home leaks in."""
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("MICROAGENT_INSECURE_REGISTRIES", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "state"
