"""pasta user networking: names, pasta's arguments and fail-closed preconditions (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest

from microagent.errors import NotFound, PolicyDenied
from microagent.network import pasta
from microagent.network.plan import NetworkPlan

ROOT_CAPS = "CapEff:\t000001ffffffffff\n"
NO_CAPS = "CapEff:\t0000000000000000\n"
NET_ADMIN_ONLY = "CapEff:\t0000000000001000\n"


def test_namespace_names_are_stable_and_per_runtime_dir() -> None:
    name = pasta.namespace_name(Path("/state/ws"))
    assert name == pasta.namespace_name(Path("/state/ws")) != pasta.namespace_name(Path("/state/ws2"))
    assert name != pasta.namespace_name(Path("/other-state/ws"))  # same workspace name, another state root
    assert name.startswith("microagent-") and len(name) == len("microagent-") + 10
    assert str(pasta.namespace_path(name)) == f"/run/netns/{name}"


def test_pasta_forwards_no_port_and_uses_slirps_addressing() -> None:
    argv = pasta.pasta_argv("microagent-0123456789", Path("/state/ws/pasta.pid"), "/usr/bin/pasta")
    assert argv[0] == "/usr/bin/pasta" and "--foreground" in argv
    pairs = dict(zip(argv[1::1], argv[2::1]))
    assert pairs["--netns"] == "microagent-0123456789" and pairs["--ns-ifname"] == pasta.PASTA_IF
    assert pairs["--pid"] == "/state/ws/pasta.pid"  # names the workspace in pasta's command line
    assert (pairs["--address"], pairs["--netmask"], pairs["--gateway"]) == ("10.0.2.15", "24", "10.0.2.2")
    assert pairs["--dns-forward"] == "10.0.2.3" and pairs["--dns"] == "10.0.2.3" and "--dhcp-dns" in argv
    for flag in ("--tcp-ports", "--udp-ports", "--tcp-ns", "--udp-ns"):
        assert pairs[flag] == "none"  # published ports go over the channel, never through pasta
    assert "--config-net" not in argv  # the namespace itself gets no address: it only passes frames


def test_pasta_plan_starts_the_vmm_inside_the_namespace() -> None:
    plan = NetworkPlan("user", provider="pasta", namespace="microagent-0123456789", tap=pasta.VMM_TAP)
    assert plan.vmm_prefix() == ["nsenter", "--net=/run/netns/microagent-0123456789", "--"]
    assert "tap,id=net0,ifname=vmtap0,script=no,downscript=no" in plan.qemu_args()
    assert plan.guest_config() == NetworkPlan("user").guest_config()  # the guest cannot tell slirp from pasta
    described = plan.describe()
    assert described["provider"] == "pasta" and described["namespace"] == "microagent-0123456789"
    slirp = NetworkPlan("user", provider="slirp")
    assert slirp.vmm_prefix() == [] and slirp.qemu_args()[1] == "user,id=net0"
    assert slirp.describe()["provider"] == "slirp" and "namespace" not in slirp.describe()


def test_preconditions_fail_closed_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pasta, "pasta_binary", lambda: "/usr/bin/pasta")
    for status in (NO_CAPS, NET_ADMIN_ONLY):
        with pytest.raises(PolicyDenied) as exc:
            pasta.check_preconditions(status)
        assert "needs root" in exc.value.message and "qemu backend" in exc.value.remediation


def test_preconditions_name_a_missing_pasta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pasta, "pasta_binary", lambda: None)
    with pytest.raises(NotFound) as exc:
        pasta.check_preconditions(ROOT_CAPS)
    assert "pasta" in exc.value.message and "apt-get install passt" in exc.value.remediation


def test_qemu_user_provider_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from microagent.supervisors.firecracker.backend import FirecrackerBackend
    from microagent.supervisors.qemu.backend import QemuBackend

    monkeypatch.delenv("MICROAGENT_QEMU_USER_NETWORK", raising=False)
    assert QemuBackend().user_provider() == "slirp" and FirecrackerBackend().user_provider() == "pasta"
    monkeypatch.setenv("MICROAGENT_QEMU_USER_NETWORK", "pasta")
    assert QemuBackend().user_provider() == "pasta"
    monkeypatch.setenv("MICROAGENT_QEMU_USER_NETWORK", "vde")
    with pytest.raises(PolicyDenied, match="not a user network provider"):
        QemuBackend().user_provider()
