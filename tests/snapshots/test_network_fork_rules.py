"""The pure rules behind networked forks: each workspace's MAC, the guest's addressing, a fork's -p."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from microagent.errors import InvalidRequest, Unsupported
from microagent.network.plan import NatLease, NetworkPlan, guest_mac
from microagent.workspace.snapshots import check_fork_network, fork_publish


def test_every_runtime_directory_has_its_own_locally_administered_unicast_mac(tmp_path: Path) -> None:
    macs = {guest_mac(tmp_path / "run" / name) for name in ("base", "base-a", "base-b")}
    macs.add(guest_mac(tmp_path / "other-root" / "run" / "base"))  # same name, another state root
    assert len(macs) == 4
    for mac in macs:
        assert re.fullmatch(r"02(:[0-9a-f]{2}){5}", mac), mac  # 0x02: locally administered, unicast
    assert guest_mac(tmp_path / "run" / "base") == guest_mac(tmp_path / "run" / "base")  # stable across boots


def test_the_guest_config_carries_the_mac_for_user_and_nat_only() -> None:
    mac = "02:11:22:33:44:55"
    user = NetworkPlan(mode="user", provider="pasta", mac=mac).guest_config()
    nat = NetworkPlan(mode="nat", lease=NatLease("10.213.0.8/30"), mac=mac).guest_config()
    assert user["interfaces"][0]["mac"] == mac and nat["interfaces"][0]["mac"] == mac
    assert nat["interfaces"][0]["address"] == "10.213.0.10" and nat["interfaces"][0]["gateway"] == "10.213.0.9"
    assert NetworkPlan(mode="isolated").guest_config()["interfaces"] == []
    assert NetworkPlan(mode="nat", lease=NatLease("10.213.0.8/30"), mac=mac).describe()["guestMac"] == mac
    assert "mac" not in NetworkPlan(mode="user").guest_config()["interfaces"][0]  # no MAC: the VMM's


def test_a_fork_publishes_only_its_own_ports() -> None:
    nat = SimpleNamespace(network="nat")
    assert [p.hostPort for p in fork_publish(nat, ["127.0.0.1:8081:80", "8082:80"])] == [8081, 8082]
    assert fork_publish(nat, []) == ()
    with pytest.raises(InvalidRequest, match="isolated"):
        fork_publish(SimpleNamespace(network="isolated"), ["8081:80"])
    with pytest.raises(InvalidRequest, match="published twice"):
        fork_publish(nat, ["8081:80", "8081:81"])
    with pytest.raises(InvalidRequest, match="udp"):
        fork_publish(nat, ["8081:80/udp"])


def test_networked_forks_are_refused_where_the_backend_cannot_readdress_them() -> None:
    for network in ("user", "nat", "isolated"):
        check_fork_network(SimpleNamespace(backend="qemu", network=network), "base:t")
    check_fork_network(SimpleNamespace(backend="firecracker", network="isolated"), "base:t")
    with pytest.raises(Unsupported, match="supported on qemu only"):
        check_fork_network(SimpleNamespace(backend="firecracker", network="nat"), "base:t")
