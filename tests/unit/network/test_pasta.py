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
    assert "--no-map-gw" in argv and "--ipv4-only" in argv  # the gateway is not the host's loopback
    opted_in = pasta.pasta_argv("microagent-0123456789", Path("/state/ws/pasta.pid"), map_host_loopback=True)
    assert "--no-map-gw" not in opted_in and "--ipv4-only" in opted_in


def test_guest_filters_let_through_dns_and_dhcp_then_refuse_private_ranges() -> None:
    """The order is the policy: allows first, denied ranges next, then everything else (IPv4, ARP)."""
    rules = [" ".join(f) for f in pasta.guest_filters(allow_gateway=False)]
    redirected = [r for r in rules if "redirect dev pasta0" in r]
    assert [r.split(" prio ")[1].split()[0] for r in rules] == sorted(
        (r.split(" prio ")[1].split()[0] for r in rules), key=int)
    assert "match ip dst 10.0.2.3/32 match ip dport 53 0xffff" in redirected[0]
    assert all("match u8 0x45 0xff at 0 match u16 0 0x3fff at 6" in r for r in redirected[:3])
    assert "match ip dst 10.0.2.2/32" not in " ".join(rules)
    denied = [r.split("match ip dst ")[1].split()[0] for r in rules if "flowid" in r]
    assert {"10.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12",
            "192.168.0.0/16", "224.0.0.0/4"} <= set(denied)
    assert rules[-2].startswith("protocol ip prio 20") and rules[-1].startswith("protocol arp prio 21")
    assert not any(r.startswith("protocol all") or "ipv6" in r for r in rules)  # IPv6 is never passed
    opted_in = [" ".join(f) for f in pasta.guest_filters(allow_gateway=True)]
    assert any("match ip dst 10.0.2.2/32 action mirred" in r for r in opted_in)


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
    assert QemuBackend().user_provider() == "pasta" and FirecrackerBackend().user_provider() == "pasta"
    monkeypatch.setenv("MICROAGENT_QEMU_USER_NETWORK", "slirp")  # the unfiltered fallback, asked for
    assert QemuBackend().user_provider() == "slirp"
    monkeypatch.setenv("MICROAGENT_QEMU_USER_NETWORK", "vde")
    with pytest.raises(PolicyDenied, match="not a user network provider"):
        QemuBackend().user_provider()


def test_pasta_is_told_the_hosts_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--dns`` given, pasta reads no resolver itself: the guest's queries went nowhere.
    (Only a pasta that knows ``--dns-host`` is told: Debian 12's would refuse to start.)"""
    monkeypatch.setattr(pasta, "knows_option", lambda binary, option: True)
    assert pasta.host_resolver("# x\nnameserver fe80::1\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n") == "127.0.0.53"
    assert pasta.host_resolver("search example\n") == ""
    argv = pasta.pasta_argv("microagent-0123456789", Path("/p.pid"), dns_host="127.0.0.53")
    assert argv[argv.index("--dns-host") + 1] == "127.0.0.53"
    assert "--dns-host" not in pasta.pasta_argv("microagent-0123456789", Path("/p.pid"))
    monkeypatch.setattr(pasta, "knows_option", lambda binary, option: False)
    assert "--dns-host" not in pasta.pasta_argv("microagent-0123456789", Path("/p.pid"), dns_host="127.0.0.53")
