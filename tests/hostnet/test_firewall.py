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
    firewall.add_rules(sys.argv[3], "mat0123456789", NatLease("10.213.0.4/30"), kind)
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

    def call(self, op: str, kind: str = "", workspace: str = "ws", env: dict[str, str] | None = None) -> object:
        return json.loads(self.sh(sys.executable, "-c", SNIPPET, op, kind, workspace, env=env))


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

    assert ns.call("remove", "", "ws") == [3, ["other"]]
    assert "microagent:ws" not in ns.sh("iptables-save")
    assert ns.call("remove", "", "other") == [3, []]
    saved = ns.sh("iptables-save")
    assert "MICROAGENT" not in saved and "microagent" not in saved  # chains and jumps gone with the last rule
    assert "-A FORWARD -i eth9 -j ACCEPT" in saved and ":FORWARD DROP" in saved  # theirs untouched


def test_nft_rules_live_in_our_table(ns: Ns) -> None:
    assert ns.call("add", "nft", "ws") == ["ws"]
    assert 'comment "microagent:ws"' in ns.sh("nft", "list", "table", "inet", "microagent")
    assert ns.call("remove", "", "ws") == [3, []]
    assert ns.sh("nft", "list", "ruleset").strip() == ""
