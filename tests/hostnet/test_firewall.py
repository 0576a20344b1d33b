"""NAT firewall rules with the real nft and iptables, inside network namespaces the test creates.

No VM: the rules are added and removed through :mod:`microagent.network.firewall`
in a child process that runs in a fresh namespace (``ip netns exec``), and the
namespace's ruleset is read back with the real tools.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Iterator

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="firewall tests need root (network namespaces)")

SNIPPET = """
import json, sys
from microagent.network import firewall
from microagent.network.plan import NatLease
op, kind = sys.argv[1], sys.argv[2]
if op == "choose":
    print(json.dumps(firewall.choose()))
elif op == "add":
    dns = [d for d in sys.argv[4].split(",") if d]
    firewall.add_rules(sys.argv[3], "mat0123456789", NatLease("10.213.0.4/30"), kind, dns=dns,
                       allow_host=sys.argv[5] == "1")
    print(json.dumps(sorted(firewall.rule_owners())))
else:
    print(json.dumps([firewall.remove_rules(sys.argv[3]), sorted(firewall.rule_owners())]))
"""


class Ns:
    def __init__(self) -> None:
        self.name = f"mafw-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)

    def sh(self, *argv: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def call(self, op: str, kind: str = "", workspace: str = "ws", env: dict[str, str] | None = None,
             dns: str = "", allow_host: bool = False) -> object:
        return json.loads(self.sh(sys.executable, "-c", SNIPPET, op, kind, workspace, dns, "1" if allow_host else "0",
                                  env=env))


@pytest.fixture
def ns() -> Iterator[Ns]:
    n = Ns()
    yield n
    subprocess.run(["ip", "netns", "delete", n.name], capture_output=True)


def test_auto_prefers_iptables_where_forward_drops_by_policy(ns: Ns) -> None:
    env = {"MICROAGENT_NAT_FIREWALL": "auto"}
    assert ns.call("choose", env=env) == "nft"
    ns.sh("iptables", "-P", "FORWARD", "DROP")  # what Docker does
    assert ns.call("choose", env=env) == "iptables"
    assert ns.call("choose", env={"MICROAGENT_NAT_FIREWALL": "nft"}) == "nft"  # asked for: obeyed


def test_iptables_rules_live_in_our_chains_and_leave_others_alone(ns: Ns) -> None:
    ns.sh("iptables", "-P", "FORWARD", "DROP")
    ns.sh("iptables", "-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT")  # someone else's rule
    assert ns.call("add", "iptables", "ws") == ["ws"]
    assert ns.call("add", "iptables", "other") == ["other", "ws"]
    forward = ns.sh("iptables", "-S", "FORWARD")
    assert forward.splitlines()[1].startswith("-A FORWARD -m comment --comment microagent -j MICROAGENT-FORWARD")
    nat = ns.sh("iptables", "-t", "nat", "-S", "MICROAGENT-POSTROUTING")
    assert "-s 10.213.0.4/30 ! -o mat0123456789" in nat and "MASQUERADE" in nat
    assert ns.sh("iptables", "-S", "INPUT").splitlines()[1].startswith(
        "-A INPUT -m comment --comment microagent -j MICROAGENT-INPUT")

    assert ns.call("remove", "", "ws") == [15, ["other"]]
    assert "microagent:ws" not in ns.sh("iptables-save")
    assert ns.call("remove", "", "other") == [15, []]
    saved = ns.sh("iptables-save")
    assert "MICROAGENT" not in saved and "microagent" not in saved  # chains and jumps gone with the last rule
    assert "-A FORWARD -i eth9 -j ACCEPT" in saved and ":FORWARD DROP" in saved  # theirs untouched


def test_nft_rules_live_in_our_table(ns: Ns) -> None:
    assert ns.call("add", "nft", "ws") == ["ws"]
    assert 'comment "microagent:ws"' in ns.sh("nft", "list", "table", "inet", "microagent")
    assert ns.call("remove", "", "ws") == [8, []]
    assert ns.sh("nft", "list", "ruleset").strip() == ""


DENIED = ["10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"]


@pytest.mark.parametrize("kind", ["nft", "iptables"])
def test_rules_deny_private_destinations_and_the_host_but_let_dns_through(ns: Ns, kind: str) -> None:
    """The default: the TAP forwards to public addresses only (the DNS servers it was given
    excepted) and reaches the host only with replies and DNS; allow_host opens the TAP's own
    address.  (Real guests prove the traffic: tests/security/test_network_nat_egress.py.)"""
    ns.call("add", kind, "ws", dns="10.0.0.2")
    text = ns.sh("nft", "list", "ruleset") if kind == "nft" else ns.sh("iptables-save")
    for net in DENIED:
        assert net in text
    assert "10.0.0.2" in text and "10.213.0.5" not in text  # DNS exception; host not open
    ns.call("remove", "", "ws")
    ns.call("add", kind, "ws", allow_host=True)
    text = ns.sh("nft", "list", "ruleset") if kind == "nft" else ns.sh("iptables-save")
    assert "10.213.0.5" in text  # the TAP's host address, and nothing more of the host
    ns.call("remove", "", "ws")
