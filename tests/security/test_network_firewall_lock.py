"""One workspace's teardown never takes another's firewall rules with it.

Removing the last rule drops our nft table (or iptables chains); without a
host-wide lock a concurrent add lands between "no rule left" and "drop the
table" and is lost.  Real nft/iptables, in a network namespace the test
creates, with workspaces starting and stopping in parallel processes.
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

WORKER = """
import json, random, sys, time
from microagent.network import firewall
from microagent.network.plan import NatLease
role, kind, owner, index = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tap, lease = f"mat{index:010d}", NatLease(f"10.213.{index}.0/30")
if role == "count":  # how many rules one workspace gets
    firewall.add_rules(owner, tap, lease, kind)
    print(json.dumps(firewall.remove_rules(owner)))
elif role == "churn":  # a workspace started and stopped over and over
    for _ in range(12):
        firewall.add_rules(owner, tap, lease, kind)
        firewall.remove_rules(owner)
else:  # a workspace that starts once, meanwhile, and stays
    time.sleep(random.uniform(0, 1.5))
    firewall.add_rules(owner, tap, lease, kind)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mafl-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.mark.parametrize("kind", ["nft", "iptables"])
def test_concurrent_adds_and_removes_keep_every_live_workspace_rules(netns: str, kind: str) -> None:
    def worker(role: str, owner: str, index: int) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", WORKER, role, kind, owner,
                                 str(index)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    counted = worker("count", "probe", 0).communicate(timeout=60)
    per_workspace = json.loads(counted[0])
    assert per_workspace >= 3, counted

    stayers = [f"stay{i}" for i in range(4)]
    procs = [worker("churn", f"churn{i}", 10 + i) for i in range(3)]
    procs += [worker("stay", owner, 20 + i) for i, owner in enumerate(stayers)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err

    remover = """
import json, sys
from microagent.network import firewall
print(json.dumps({o: firewall.remove_rules(o) for o in sys.argv[1:]}))
"""
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", remover, *stayers],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {owner: per_workspace for owner in stayers}  # nobody's rules were lost
    ruleset = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"], capture_output=True,
                             text=True).stdout
    assert "microagent" not in ruleset.lower()  # and the last removal still took our table/chains
