"""Workspaces over a three-node Ray cluster, real guests behind each node's host agent.

The tests share one cluster (conftest ``harness``) and run in file order as
one story: six workspaces spread over the nodes; names are unique; ``require``
and full nodes; an agent restart re-adopts running VMs; removing a node makes
its workspaces lost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from microagent.cluster import WorkspaceLost, runtime
from microagent.errors import Conflict, ResourceExhausted, Transient, Unsupported
from microagent.workspace.lifecycle import WorkspaceStore

NAMES = [f"w{i}" for i in range(6)]
placed: dict[str, str] = {}  # name -> node ID, filled by the first test


def test_six_workspaces_spread_over_the_nodes_and_answer_exec(harness) -> None:
    c = harness.cluster
    for name in NAMES:
        ws = c.create(name, profile="tiny", env={"WHO": name})
        placed[name] = ws.node
        assert ws.hostname
    assert Counter(placed.values()) == {harness.node_id(i): 2 for i in range(3)}
    for name in NAMES:
        r = c.open(name).exec('echo "$WHO on $(hostname)"')
        assert (r.exit_code, r.stdout) == (0, f"{name} on {name}\n".encode())
    rows = {r["name"]: r for r in c.list()}
    assert {n: (rows[n]["node"], rows[n]["state"]) for n in NAMES} == {n: (placed[n], "running") for n in NAMES}
    ws = c.open("w0")
    assert ws.put("/root/in.txt", b"through the cluster") == len(b"through the cluster")
    assert ws.read_file("/root/in.txt") == b"through the cluster"
    # each agent keeps its workspaces in its own state root, through the ordinary library
    for i, root in enumerate(harness.roots):
        assert {w["name"] for w in WorkspaceStore(root).list()} == {
            n for n, node in placed.items() if node == harness.node_id(i)}


def test_cli_reaches_the_cluster(harness) -> None:
    addr = harness.ray_cluster.address
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cli = [str(Path(sys.executable).parent / "microagent")]
    out = subprocess.run([*cli, "exec", "--cluster", addr, "w1", "--", "echo", "hi"], capture_output=True,
                         env=env, timeout=120)
    assert (out.returncode, out.stdout) == (0, b"hi\n"), out.stderr
    out = subprocess.run([*cli, "list", "--cluster", addr], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in NAMES:
        assert any(line.split()[:2] == [name, "running"] for line in out.stdout.splitlines()), out.stdout
    out = subprocess.run([*cli, "cluster", "status", "--cluster", addr], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("alive  agent: qemu/") == 3, out.stdout


def test_names_are_unique_across_the_cluster(harness) -> None:
    with pytest.raises(Conflict, match="exists already in the cluster"):
        harness.cluster.create("w0", profile="tiny", start=False)


def test_placement_honours_require_and_full_nodes(harness) -> None:
    c = harness.cluster
    kvm_nodes = {harness.node_id(0), harness.node_id(1)}
    first = c.create("k1", profile="tiny", require={"kvm": 1}, start=False)
    second = c.create("k2", profile="tiny", require={"kvm": 1}, start=False)
    assert {first.node, second.node} == kvm_nodes  # spread: one each, both now at their limit of 3
    assert first.state == "prepared"
    with pytest.raises(ResourceExhausted, match="no node has room"):
        c.create("k3", profile="tiny", require={"kvm": 1}, start=False)
    with pytest.raises(Unsupported, match="no node of the cluster offers kvm=2"):
        c.create("k4", profile="tiny", require={"kvm": 2}, start=False)
    names = {r["name"] for r in c.list()}
    assert "k3" not in names and "k4" not in names
    # the kvm: 0 node still has room for a workspace that does not need KVM
    third = c.create("k5", profile="tiny", start=False)
    assert third.node == harness.node_id(2)
    for ws in (first, second, third):
        assert ws.delete() is True


def test_snapshot_and_fork_stay_on_the_node(harness) -> None:
    ws = harness.cluster.open("w0")
    ws.exec("echo forked > /root/mark")
    assert ws.snapshot("s1")["tag"] == "s1"
    fork = ws.fork("w0-fork", "s1")
    try:
        assert fork.node == ws.node
        assert fork.exec(["cat", "/root/mark"]).stdout == b"forked\n"
    finally:
        assert fork.delete(force=True) is True


def test_a_restarted_agent_readopts_its_running_workspaces(harness) -> None:
    ray = runtime.import_ray()
    node = harness.node_id(1)
    handle = runtime.agent(node)
    before = ray.get(handle.call.remote("ping"))[1]
    ray.kill(handle, no_restart=False)  # a crash: Ray restarts it on the same node
    mine = [n for n, where in placed.items() if where == node]
    deadline = time.monotonic() + 60
    while True:
        try:
            r = harness.cluster.open(mine[0]).exec(["echo", "back"])
            break
        except Transient:
            assert time.monotonic() < deadline, "the agent did not come back in 60 s"
            time.sleep(0.5)
    assert r.stdout == b"back\n"
    after = ray.get(handle.call.remote("ping"))[1]
    assert after["pid"] != before["pid"]
    assert after["adopted"] == {n: "running" for n in mine}


def test_removing_a_node_makes_its_workspaces_lost(harness) -> None:
    c = harness.cluster
    gone = harness.node_id(2)
    lost = sorted(n for n, where in placed.items() if where == gone)
    harness.ray_cluster.remove_node(harness.nodes[2])
    for name in lost:
        with pytest.raises(WorkspaceLost) as err:
            c.open(name).exec(["true"])
        assert gone in err.value.message and "lost" in err.value.message
        assert err.value.details == {"node": gone, "state": "lost"}
    rows = {r["name"]: r["state"] for r in c.list()}
    assert {n: rows[n] for n in lost} == {n: "lost" for n in lost}
    assert all(rows[n] == "running" for n in NAMES if n not in lost)
    # never recreated elsewhere: a new workspace goes to the nodes that are left
    with pytest.raises(Conflict):
        c.create(lost[0], profile="tiny", start=False)
    assert c.delete(lost[0])["lost"] is True  # forgetting frees the name
    assert lost[0] not in {r["name"] for r in c.list()}
