"""Firecracker networking with the real binary: ``user`` (pasta's namespace) and ``nat`` (a host TAP).

No guest boots here (no hardware KVM), so these tests check what can be
checked for real: the namespace and its TAP exist, pasta runs attached to it,
firecracker runs inside it and opened the TAP (it refuses a configuration
whose TAP it cannot open), and quarantine, kill and a failed start leave
nothing behind.  The same namespace path carries a real QEMU guest's traffic
in ``tests/vm/test_network.py`` (``MICROAGENT_QEMU_USER_NETWORK=pasta``).

The supervisor runs inside a namespace the test creates, whose only interface
is a veth into a second test namespace: pasta copies that, and nothing
reaches the machine's own network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from microagent.host.process import ProcessRef, is_alive
from microagent.network import pasta as pasta_net
from microagent.supervisors.firecracker.api import FirecrackerAPI

MICROAGENT = str(Path(sys.executable).parent / "microagent")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network tests need root (namespaces, TAPs, nftables)")


def ip(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True)


@pytest.fixture
def host_netns() -> Iterator[str]:
    """A namespace with a routable veth (what pasta copies) into a peer namespace."""
    tag = uuid.uuid4().hex[:6]
    host, world = f"mafh-{tag}", f"mafw-{tag}"
    for ns in (host, world):
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    ip("link", "add", f"vf{tag}a", "netns", host, "type", "veth", "peer", f"vf{tag}b", "netns", world)
    ip("-n", host, "addr", "add", "198.51.100.1/24", "dev", f"vf{tag}a")
    ip("-n", host, "link", "set", f"vf{tag}a", "up")
    ip("-n", world, "addr", "add", "198.51.100.2/24", "dev", f"vf{tag}b")
    ip("-n", world, "link", "set", f"vf{tag}b", "up")
    ip("-n", host, "route", "add", "default", "via", "198.51.100.2")
    yield host
    for ns in (host, world):
        ip("netns", "delete", ns)


def _network_json(rt: Path) -> dict:
    return json.loads((rt / "network.json").read_text())


def test_firecracker_runs_in_pastas_namespace_and_quarantine_cuts_it(fc, host_netns: str) -> None:
    fc.netns = host_netns
    doc = fc.ok("start", network={"mode": "user"})
    assert doc["event"]["state"] == "starting"
    rt, runtime = fc.runtime_dir(), fc.runtime()
    net = _network_json(rt)
    namespace = net["namespace"]
    assert net["mode"] == "user" and net["provider"] == "pasta" and net["tap"] == "vmtap0"
    assert namespace in ip("netns", "list").stdout

    # firecracker itself (nsenter exec'd it: same PID) lives in that namespace, not ours
    pid = runtime["pid"]
    assert runtime["argv"][:3] == ["nsenter", f"--net=/run/netns/{namespace}", "--"]
    assert os.readlink(f"/proc/{pid}/exe") == str(fc.binary)
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{namespace}").st_ino
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino

    # firecracker opened the namespace's TAP as the guest's eth0 (it fails the config otherwise)
    live = FirecrackerAPI(rt / "firecracker.sock").vm_config()
    assert [(n["iface_id"], n["host_dev_name"]) for n in live["network-interfaces"]] == [("eth0", "vmtap0")]
    links = ip("-n", namespace, "-br", "link").stdout
    assert "vmtap0" in links and "pasta0" in links
    filters = subprocess.run(["ip", "netns", "exec", namespace, "tc", "filter", "show", "dev", "vmtap0", "ingress"],
                             capture_output=True, text=True).stdout
    assert "mirred" in filters and "pasta0" in filters
    assert "0a000000/ff000000" in filters  # 10.0.0.0/8 never reaches pasta (default egress policy)
    # the guest is told slirp's addressing, which pasta serves
    config = json.loads((rt / "config.disk").read_bytes().rstrip(b"\0"))
    assert config["network"]["interfaces"] == [{"name": "eth0", "address": "10.0.2.15", "prefix": 24,
                                                "gateway": "10.0.2.2", "mac": net["guestMac"]}]

    # pasta runs attached to it, recorded with its start time
    pasta = ProcessRef(net["pastaPid"], net["pastaStarttime"])
    assert is_alive(pasta) and int((rt / "pasta.pid").read_text()) == pasta.pid
    cmdline = Path(f"/proc/{pasta.pid}/cmdline").read_bytes().split(b"\0")
    assert namespace.encode() in cmdline and str(rt / "pasta.pid").encode() in cmdline
    assert b"--no-map-gw" in cmdline  # the gateway is not the host's loopback by default

    # quarantine: pasta (the only way out) is gone, the name too; firecracker keeps running
    q = fc.ok("quarantine")
    assert "pasta" in q["event"]["detail"] and f"netns {namespace}" in q["event"]["detail"]
    assert not is_alive(pasta) and namespace not in ip("netns", "list").stdout
    assert is_alive(ProcessRef(pid, runtime["starttime"]))

    assert fc.ok("kill")["event"]["state"] == "stopped"
    assert fc.ok("delete")["event"]["detail"] == "deleted"


def test_inspect_restarts_a_dead_pasta_and_kill_removes_it(fc, host_netns: str) -> None:
    fc.netns = host_netns
    fc.ok("start", network={"mode": "user", "portForwards": [
        {"host": "127.0.0.1", "hostPort": 18931, "guestPort": 80, "protocol": "tcp"}]})
    rt = fc.runtime_dir()
    net = _network_json(rt)
    first = ProcessRef(net["pastaPid"], net["pastaStarttime"])
    assert net["published"][0]["hostPort"] == 18931

    os.kill(first.pid, signal.SIGKILL)  # pasta dies behind our back: the guest has no way out
    deadline = time.monotonic() + 5
    while is_alive(first) and time.monotonic() < deadline:
        time.sleep(0.02)
    fc.ok("inspect")
    net = _network_json(rt)
    second = ProcessRef(net["pastaPid"], net["pastaStarttime"])
    assert second != first and is_alive(second)
    filters = subprocess.run(["ip", "netns", "exec", net["namespace"], "tc", "filter", "show", "dev", "vmtap0",
                              "ingress"], capture_output=True, text=True).stdout
    redirects = sum("mirred" in " ".join(f) for f in pasta_net.guest_filters(allow_gateway=False))
    assert filters.count("mirred") == redirects and "pasta0" in filters  # rewired once to the new pasta

    assert fc.ok("kill")["event"]["state"] == "stopped"
    assert not is_alive(second) and net["namespace"] not in ip("netns", "list").stdout


def test_a_pasta_that_exits_at_start_fails_closed_and_leaves_nothing(fc) -> None:
    """Debian 12's own pasta (chosen through ``MICROAGENT_PASTA``) exits at once in a namespace
    with only ``lo`` (no interface to copy): a clear error with pasta's reason, nothing left."""
    distro = Path("/usr/bin/pasta")
    if not distro.is_file():
        pytest.skip("Debian's passt package is not installed (scripts/host-deps.sh installs it)")
    lonely = f"mafl-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", lonely)
    try:
        fc.netns = lonely
        fc.env["MICROAGENT_PASTA"] = str(distro)
        doc = fc.call("start", network={"mode": "user"})
        assert doc["ok"] is False and doc["error"]["kind"] == "permanent"
        assert "pasta exited" in doc["error"]["message"] and "routable interface" in doc["error"]["message"]
        assert "default route" in doc["error"]["remediation"]
        assert "microagent-" not in ip("netns", "list").stdout
        assert not (fc.runtime_dir() / "firecracker.sock").exists()  # firecracker was never started
    finally:
        ip("netns", "delete", lonely)


def test_gc_cleans_up_after_a_crash_and_reports_foreign_namespaces(fc, host_netns: str) -> None:
    fc.netns = host_netns
    fc.ok("start", network={"mode": "user"})
    runtime, net = fc.runtime(), _network_json(fc.runtime_dir())
    for pid in (runtime["pid"], runtime["routerPid"]):  # the VMM and its helper die unobserved
        os.kill(pid, signal.SIGKILL)
    stranger = "microagent-00000000ff"  # looks like ours, belongs to no workspace of this state root
    ip("netns", "add", stranger)
    try:
        env = {**os.environ, "MICROAGENT_FIRECRACKER": str(fc.binary), "MICROAGENT_FIRECRACKER_ALLOW_NO_KVM": "1"}
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{host_netns}", "--", MICROAGENT, "gc", "--json",
                               "--state-dir", str(fc.state)], capture_output=True, text=True, env=env, timeout=60)
        doc = json.loads(proc.stdout)
        assert proc.returncode == 0, doc
        assert {"workspace": "ws", "state": "failed"} in doc["reconciled"]
        assert not is_alive(ProcessRef(net["pastaPid"], net["pastaStarttime"]))
        names = ip("netns", "list").stdout
        assert net["namespace"] not in names
        assert doc["foreign"]["namespaces"] == [stranger] and stranger in names  # reported, never removed
    finally:
        ip("netns", "delete", stranger)


def test_nat_gives_firecracker_a_host_tap_and_kill_removes_it(fc, host_netns: str) -> None:
    fc.netns = host_netns
    inside = ["nsenter", f"--net=/run/netns/{host_netns}", "--"]
    subprocess.run([*inside, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    fc.ok("start", network={"mode": "nat"})
    rt, net = fc.runtime_dir(), _network_json(fc.runtime_dir())
    assert net["mode"] == "nat" and net["tap"].startswith("mat") and net["subnet"].startswith("10.213.")
    assert fc.runtime()["argv"][0] == str(fc.binary)  # nat: firecracker stays in the supervisor's namespace
    live = FirecrackerAPI(rt / "firecracker.sock").vm_config()
    assert [(n["iface_id"], n["host_dev_name"]) for n in live["network-interfaces"]] == [("eth0", net["tap"])]
    assert f"{net['hostAddress']}/30" in ip("-n", host_netns, "addr", "show", "dev", net["tap"]).stdout
    rules = subprocess.run([*inside, "nft", "list", "table", "inet", "microagent"], capture_output=True,
                           text=True).stdout
    assert "masquerade" in rules and f'comment "microagent:ws:{net["tap"]}"' in rules
    config = json.loads((rt / "config.disk").read_bytes().rstrip(b"\0"))
    assert config["network"]["interfaces"][0]["address"] == net["guestAddress"]

    assert fc.ok("kill")["event"]["state"] == "stopped"
    assert net["tap"] not in ip("-n", host_netns, "-br", "link").stdout
    assert subprocess.run([*inside, "nft", "list", "ruleset"], capture_output=True, text=True).stdout.strip() == ""
    fc.ok("delete")


def test_same_named_workspaces_of_two_state_roots_keep_their_own_network(fc, host_netns: str,
                                                                         tmp_path: Path) -> None:
    """Another state root's ``ws`` (another user, another project) gets its own TAP, rules and
    namespace: starting or killing one never touches the other's."""
    import dataclasses

    other_state = tmp_path / "other-state"
    other_state.mkdir()
    other = dataclasses.replace(fc, state=other_state, env={})
    inside = ["nsenter", f"--net=/run/netns/{host_netns}", "--"]
    subprocess.run([*inside, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    fc.netns = other.netns = host_netns
    try:
        fc.ok("start", network={"mode": "nat"})
        other.ok("start", network={"mode": "nat"})
        mine, theirs = _network_json(fc.runtime_dir()), _network_json(other.runtime_dir())
        assert mine["tap"] != theirs["tap"] and mine["subnet"] != theirs["subnet"]
        fc.ok("kill")
        links = ip("-n", host_netns, "-br", "link").stdout
        assert mine["tap"] not in links and theirs["tap"] in links
        rules = subprocess.run([*inside, "nft", "list", "table", "inet", "microagent"], capture_output=True,
                               text=True).stdout
        assert f'microagent:ws:{theirs["tap"]}' in rules and mine["tap"] not in rules
        assert FirecrackerAPI(other.runtime_dir() / "firecracker.sock").instance_info().state == "Running"
    finally:
        other.call("kill")
        assert not other.leftovers()
