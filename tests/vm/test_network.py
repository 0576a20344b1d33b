"""Network modes with real guests, real TAPs and real nftables.

Every test runs microagent inside network namespaces it creates itself, with
the "outside world" an HTTP server inside a namespace (or on that
namespace's loopback): no packet leaves this machine's test namespaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from support_netns import Netns, host_and_world, sh

MICROAGENT = str(Path(sys.executable).parent / "microagent")

@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = Netns("ma")
    yield ns
    ns.delete()


def run_json(ns: Netns, *args: str) -> tuple[int, dict]:
    proc = ns.run(MICROAGENT, "run", "--json", *args)
    return proc.returncode, json.loads(proc.stdout or "{}")


def test_isolated_guest_has_only_lo_and_cannot_connect(vm_state: Path, netns: Netns) -> None:
    server = netns.serve("127.0.0.1", 8701)
    try:
        code, doc = run_json(netns, "--network", "isolated", "builtin:busybox", "--", "sh", "-c",
                             "ls /sys/class/net; timeout 5 wget -qO- http://10.0.2.2:8701/ && echo REACHED")
    finally:
        server.kill()
    assert doc["result"]["stdout"].split() == ["lo"]
    assert "REACHED" not in doc["result"]["stdout"]


@pytest.mark.parametrize("allow", [False, True], ids=["default", "allow-host-loopback"])
def test_user_mode_reaches_the_hosts_loopback_only_when_allowed(vm_state: Path, nat_world: tuple[Netns, Netns],
                                                                 allow: bool) -> None:
    """``user`` is pasta (QEMU's default now): the gateway maps to the host's loopback only with
    ``--allow-host-loopback`` (more targets: tests/security/test_network_egress.py).  pasta needs a
    host with a routable interface to reach even the loopback (measured), hence the world."""
    netns, _ = nat_world
    netns.run("ip", "route", "add", "default", "via", "198.51.100.2")
    server = netns.serve("127.0.0.1", 8702)
    try:
        code, doc = run_json(netns, "--network", "user", *(["--allow-host-loopback"] if allow else []),
                             "builtin:busybox", "--", "sh", "-c",
                             "timeout 8 wget -qO- http://10.0.2.2:8702/; echo; cat /etc/resolv.conf; "
                             "grep host.microagent.internal /etc/hosts")
    finally:
        server.kill()
        seen = server.communicate()[0]
    assert code == 0, doc
    out = doc["result"]["stdout"]
    assert ("hello from 127.0.0.1" in out) is allow and "nameserver 10.0.2.3" in out
    assert "10.0.2.2 host.microagent.internal" in out
    assert ("127.0.0.1" in seen) is allow  # the server saw the guest's connection only when allowed


@pytest.fixture
def nat_world() -> Iterator[tuple[Netns, Netns]]:
    """``host`` (where microagent runs; no default route, ip_forward as the test sets it) and ``world``."""
    with host_and_world("mv", route=False, forward=False) as (host, world, _):
        yield host, world


def test_nat_fails_closed_without_ip_forward(vm_state: Path, nat_world: tuple[Netns, Netns]) -> None:
    host, _ = nat_world
    host.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    code, doc = run_json(host, "--network", "nat", "builtin:busybox", "--", "true")
    assert code == 125 and doc["error"]["kind"] == "policy_denied"
    assert "ip_forward" in doc["error"]["message"] and "sysctl -w net.ipv4.ip_forward=1" in doc["error"]["remediation"]
    assert "mat" not in host.run("ip", "-br", "link").stdout
    assert host.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"  # never flipped for us


def run_nat_against_world(host: Netns, world: Netns, port: int, script: str) -> tuple[dict, str]:
    """``run --network nat`` of ``script`` (ip_forward on in ``host``) while ``world`` serves HTTP
    on ``port``; returns the answer and the addresses the server saw."""
    host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    server = world.serve("198.51.100.2", port)
    try:
        code, doc = run_json(host, "--network", "nat", "builtin:busybox", "--", "sh", "-c", script)
    finally:
        server.kill()
        seen = server.communicate()[0]
    assert code == 0, doc
    return doc, seen


def test_nat_masquerades_and_leaves_nothing_behind(vm_state: Path, nat_world: tuple[Netns, Netns]) -> None:
    host, world = nat_world
    doc, seen = run_nat_against_world(host, world, 8703, "ip -4 addr show eth0; ip route; "
                                                         "timeout 20 wget -qO- http://198.51.100.2:8703/")
    out = doc["result"]["stdout"]
    assert "inet 10.213." in out and "default via 10.213." in out
    assert "hello from 198.51.100.1" in out  # masqueraded behind the host end of the veth
    assert seen.split() == ["198.51.100.1"]
    assert "mat" not in host.run("ip", "-br", "link").stdout
    assert host.run("nft", "list", "ruleset").stdout.strip() == ""


def test_user_mode_through_pasta_reaches_host_and_world_and_quarantine_cuts_it(
        vm_state: Path, nat_world: tuple[Netns, Netns]) -> None:
    """The path firecracker takes for ``--network user`` (pasta + a namespace per workspace, QEMU's
    default too), carrying a real QEMU guest's traffic, with the host's loopback opted in.  The CLI
    runs under ``nsenter`` (not ``ip netns exec``, whose private mounts would hide the workspace's
    namespace from the next command)."""
    host, world = nat_world
    host.run("ip", "route", "add", "default", "via", "198.51.100.2")  # pasta copies a routable interface
    near, far = host.serve("127.0.0.1", 8704), world.serve("198.51.100.2", 8705)
    name = f"up{uuid.uuid4().hex[:6]}"
    enter = ["nsenter", f"--net=/run/netns/{host.name}", "--", MICROAGENT]

    def ma(*args: str) -> tuple[int, dict]:
        proc = subprocess.run([*enter, args[0], "--json", *args[1:]], capture_output=True, text=True, timeout=120)
        return proc.returncode, json.loads(proc.stdout or "{}")

    try:
        assert ma("create", name, "--network", "user", "--allow-host-loopback")[0] == 0
        code, doc = ma("start", name)
        assert code == 0, doc
        net = json.loads((vm_state / "run" / name / "network.json").read_text())
        assert net["provider"] == "pasta" and net["namespace"] in sh("ip", "netns", "list")
        assert net["allowHostLoopback"] is True and net["filtered"] is True
        status = subprocess.run([*enter, "status", name], capture_output=True, text=True).stdout
        assert f"attached:   guest 10.0.2.15 via 10.0.2.2, pasta in netns {net['namespace']}" in status
        code, doc = ma("exec", name, "--", "sh", "-c", "ip -4 addr show eth0; wget -qO- http://10.0.2.2:8704/; "
                                                        "echo; wget -qO- http://198.51.100.2:8705/")
        assert code == 0, doc
        out = doc["result"]["stdout"]
        assert "inet 10.0.2.15/24" in out
        assert "hello from 127.0.0.1" in out  # the gateway reaches the host's loopback: opted in
        assert "hello from 198.51.100.1" in out  # egress leaves from the host's own address: no NAT rule

        code, doc = ma("quarantine", name)
        assert code == 0 and "pasta" in doc["detail"], doc
        assert net["namespace"] not in sh("ip", "netns", "list")
        assert not Path(f"/proc/{net['pastaPid']}").exists() or "pasta" not in Path(
            f"/proc/{net['pastaPid']}/cmdline").read_text(errors="replace")
        assert ma("kill", name)[0] == 0
        assert ma("delete", name)[0] == 0
    finally:
        subprocess.run([*enter, "kill", name], capture_output=True)
        subprocess.run([*enter, "delete", name], capture_output=True)
        near.kill()
        far.kill()
    assert "127.0.0.1" in near.communicate()[0] and "198.51.100.1" in far.communicate()[0]
    assert "microagent-" not in sh("ip", "netns", "list")
    assert host.run("nft", "list", "ruleset").stdout.strip() == ""  # pasta needs no firewall rule


def test_nat_on_a_host_whose_forward_policy_drops(vm_state: Path, nat_world: tuple[Netns, Netns]) -> None:
    """A Docker-like host (iptables FORWARD policy DROP): an accept in our own nft table could not
    override that drop, so nat's rules go first in FORWARD through our iptables chains instead."""
    host, world = nat_world
    assert host.run("iptables", "-P", "FORWARD", "DROP").returncode == 0
    doc, seen = run_nat_against_world(host, world, 8706, "timeout 20 wget -qO- http://198.51.100.2:8706/")
    assert "hello from 198.51.100.1" in doc["result"]["stdout"] and seen.split() == ["198.51.100.1"]
    saved = host.run("iptables-save").stdout
    assert "MICROAGENT" not in saved and "microagent" not in saved  # chains, jumps and rules gone
    assert ":FORWARD DROP" in saved  # the host's policy is the host's: never changed
    assert "mat" not in host.run("ip", "-br", "link").stdout


@pytest.mark.parametrize("provider", ["slirp", "pasta"])
def test_guest_dhcp_client_against_slirp_and_pasta(vm_state: Path, nat_world: tuple[Netns, Netns],
                                                    provider: str) -> None:
    """Guest init's DHCP client (what apple-vf's nat uses with vmnet) against two real DHCP
    servers: the per-boot config says only ``{"name": "eth0", "dhcp": true}``."""
    host, _ = nat_world
    host.run("ip", "route", "add", "default", "via", "198.51.100.2")
    name = f"dh{uuid.uuid4().hex[:6]}"
    enter = ["nsenter", f"--net=/run/netns/{host.name}", "--", "env", f"MICROAGENT_QEMU_USER_NETWORK={provider}"]
    try:
        sh(MICROAGENT, "create", name, "--network", "user")
        rt = vm_state / "run" / name
        cfg = json.loads((rt / "runtime.json").read_text())["config"]
        disk = rt / "dhcp-config.disk"
        doc = json.dumps({"hostname": name, "network": {"interfaces": [{"name": "eth0", "dhcp": True}]}}).encode()
        disk.write_bytes(doc + b"\0" * (64 * 1024 - len(doc)))
        cfg.update(configDiskPath=str(disk), readiness="guest")
        request = {"command": "start", "config": cfg,
                   "identity": {"requestID": "t-dhcp", "runtimeID": name, "role": "workload", "backend": "qemu"}}
        supervisor = str(Path(MICROAGENT).parent / "microagent-qemu-supervisor")
        started = subprocess.run([*enter, supervisor], input=json.dumps(request), capture_output=True, text=True,
                                 timeout=120)
        assert json.loads(started.stdout)["ok"], started.stdout
        out = subprocess.run([*enter, MICROAGENT, "exec", name, "--", "sh", "-c",
                              "ip -4 addr show eth0; ip route; cat /etc/resolv.conf"],
                             capture_output=True, text=True, timeout=60).stdout
        assert "inet 10.0.2.15/24" in out and "default via 10.0.2.2" in out and "nameserver 10.0.2.3" in out
        assert "net: eth0 up 10.0.2.15/24 via 10.0.2.2 (dhcp)" in (rt / "serial.log").read_text(errors="replace")
    finally:
        subprocess.run([*enter, MICROAGENT, "delete", "-f", name], capture_output=True)
    assert "microagent-" not in sh("ip", "netns", "list")
