"""doctor's per-mode network readiness: which provider ``user`` is, and the fix when it is not ready."""

from __future__ import annotations

import pytest

from microagent.host.detect import HostFacts, KvmInfo, Tool
from microagent.host.doctor import network_checks
from microagent.network import pasta


def facts() -> HostFacts:
    return HostFacts(os="linux", architecture="x86_64", kvm=KvmInfo(True, "hardware", "kvm"),
                     vhost_vsock=False, tun=True, user_namespaces=True,
                     tools={"qemu": Tool("qemu", "/usr/bin/qemu-system-x86_64")})


def user_check(backend: str) -> tuple[bool, str, str]:
    check = next(c for c in network_checks(backend, facts()) if c.name == "network-user")
    return check.ok, check.detail, check.remediation


def test_firecracker_user_is_pasta_with_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pasta, "readiness", lambda: (False, "user networking needs pasta; apt-get install passt"))
    assert user_check("firecracker") == (False, "user networking needs pasta", "apt-get install passt")
    monkeypatch.setattr(pasta, "readiness", lambda: (True, "pasta, root present"))
    ok, detail, _ = user_check("firecracker")
    assert ok and detail.startswith("pasta in a network namespace per workspace")


def test_qemu_user_is_pasta_and_slirp_is_flagged_unfiltered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pasta, "readiness", lambda: (False, "needs root; run as root"))
    monkeypatch.delenv("MICROAGENT_QEMU_USER_NETWORK", raising=False)
    assert user_check("qemu") == (False, "needs root", "run as root")
    monkeypatch.setenv("MICROAGENT_QEMU_USER_NETWORK", "pasta")
    assert user_check("qemu") == (False, "needs root", "run as root")
    monkeypatch.setenv("MICROAGENT_QEMU_USER_NETWORK", "slirp")
    ok, detail, fix = user_check("qemu")
    assert not ok and "unfiltered" in detail and "host's loopback" in detail
    assert "unset MICROAGENT_QEMU_USER_NETWORK" in fix
