"""Which firewall nat uses, decided before anything changes (no I/O: the tools are looked up through a stub)."""

from __future__ import annotations

import pytest

from microagent.errors import NotFound, PolicyDenied
from microagent.network import firewall


def tools(monkeypatch: pytest.MonkeyPatch, *present: str, drops: bool = False) -> None:
    monkeypatch.setattr(firewall, "_tool", lambda name: f"/usr/sbin/{name}" if name in present else None)
    monkeypatch.setattr(firewall, "forward_policy_drops", lambda: drops)


def test_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICROAGENT_NAT_FIREWALL", raising=False)
    tools(monkeypatch, "nft", "iptables")
    assert firewall.choose() == "nft"
    tools(monkeypatch, "nft", "iptables", drops=True)
    assert firewall.choose() == "iptables"  # an nft accept cannot beat iptables' DROP policy
    tools(monkeypatch, "iptables")
    assert firewall.choose() == "iptables"
    tools(monkeypatch)
    with pytest.raises(NotFound, match="neither is installed"):
        firewall.choose()


def test_explicit_choice_is_obeyed_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    tools(monkeypatch, "nft", "iptables", drops=True)
    monkeypatch.setenv("MICROAGENT_NAT_FIREWALL", "nft")
    assert firewall.choose() == "nft"
    tools(monkeypatch, "nft")
    monkeypatch.setenv("MICROAGENT_NAT_FIREWALL", "iptables")
    with pytest.raises(NotFound, match="iptables is not installed"):
        firewall.choose()
    monkeypatch.setenv("MICROAGENT_NAT_FIREWALL", "ufw")
    with pytest.raises(PolicyDenied, match="not a firewall"):
        firewall.choose()
