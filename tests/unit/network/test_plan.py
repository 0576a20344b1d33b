"""Network plans: the guest's addressing and the VMM arguments per mode."""

from __future__ import annotations

from pathlib import Path

from microagent.network.nat import has_cap_net_admin
from microagent.network.plan import NatLease, NetworkPlan, host_nameservers, tap_name


def test_isolated_has_no_nic() -> None:
    plan = NetworkPlan("isolated")
    assert plan.qemu_args() == [] and plan.guest_config()["interfaces"] == []


def test_user_mode_addressing() -> None:
    cfg = NetworkPlan("user").guest_config()
    assert cfg["interfaces"][0] == {"name": "eth0", "address": "10.0.2.15", "prefix": 24, "gateway": "10.0.2.2"}
    assert cfg["dns"] == ["10.0.2.3"]


def test_nat_lease_addresses_and_tap_args() -> None:
    lease = NatLease("10.213.0.4/30")
    assert (lease.host_address, lease.guest_address) == ("10.213.0.5", "10.213.0.6")
    plan = NetworkPlan("nat", tap="matabc", lease=lease, dns=("192.0.2.53",))
    assert "tap,id=net0,ifname=matabc,script=no,downscript=no" in plan.qemu_args()
    assert plan.guest_config()["interfaces"][0]["gateway"] == "10.213.0.5"


def test_tap_names_fit_ifnamsiz_and_are_stable() -> None:
    assert len(tap_name(Path("/s/" + "x" * 63))) <= 15
    assert tap_name(Path("/s/ws")) == tap_name(Path("/s/ws")) != tap_name(Path("/s/ws2"))
    assert tap_name(Path("/s/ws")) != tap_name(Path("/other/ws"))  # same name, another state root


def test_loopback_nameservers_are_dropped() -> None:
    assert host_nameservers("nameserver 127.0.0.53\nnameserver 192.0.2.1\n# x\nnameserver ::1\n") == ("192.0.2.1",)


def test_cap_net_admin_parsing() -> None:
    assert has_cap_net_admin("CapEff:\t0000000000001000\n")
    assert not has_cap_net_admin("CapEff:\t0000000000000000\n")
