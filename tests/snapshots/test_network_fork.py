"""Forks and restores of networked workspaces with real QEMU guests (docs/network.md, "Forks").

Each fork of a ``nat`` or ``user`` (pasta) snapshot gets a network of its own on the host (TAP,
lease and rules, or pasta and a namespace) and, in the guest, a new MAC and (nat) address set by
guest init's ``restore`` session; its ``-p`` ports are its own.  As in tests/vm/test_network.py,
microagent runs inside network namespaces the test creates (``host``, joined by a veth to
``world``, where the test's servers live): no packet leaves them.
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

pytestmark = pytest.mark.vm

MICROAGENT = str(Path(sys.executable).parent / "microagent")


@pytest.fixture
def world(snap_root: Path) -> Iterator[tuple[Netns, Netns]]:
    """``host`` (where microagent runs: ip_forward=1, a default route) and ``world``, joined by a veth."""
    with host_and_world("mf") as (host, far, _):
        yield host, far


class Cli:
    """The microagent CLI inside ``host``'s namespace (``nsenter``: the workspaces' own
    namespaces stay visible to the next command, unlike under ``ip netns exec``)."""

    def __init__(self, host: Netns, root: Path, *env: str) -> None:
        self.enter = ["nsenter", f"--net=/run/netns/{host.name}", "--", "env", *env, MICROAGENT]
        self.root = root
        self.names: list[str] = []

    def __call__(self, command: str, *args: str) -> dict:
        words = [command, args[0]] if command == "snapshot" else [command]  # a group: after its subcommand
        rest = args[len(words) - 1:]
        proc = subprocess.run([*self.enter, *words, "--json", *rest], capture_output=True, text=True, timeout=180)
        doc = json.loads(proc.stdout or "{}")
        assert proc.returncode == 0, (command, args, doc, proc.stderr)
        return doc

    def create(self, name: str, *args: str) -> dict:
        self.names.append(name)
        return self("create", name, *args)

    def sh(self, name: str, script: str) -> str:
        return self("exec", name, "--", "sh", "-c", script)["result"]["stdout"]  # exit 0: checked by __call__

    def network(self, name: str) -> dict:
        return json.loads((self.root / "run" / name / "network.json").read_text())

    def cleanup(self) -> None:
        for name in reversed(self.names):
            subprocess.run([*self.enter, "kill", name], capture_output=True)
            subprocess.run([*self.enter, "delete", name, "--force"], capture_output=True)


PROBE = "cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; ip route; hostname; cat /etc/hosts; "


def serve_and_snapshot(cli: Cli, src: str) -> None:
    """A guest web server on 8080 (its page says which workspace answers), then snapshot ``ready``."""
    cli.sh(src, f"mkdir -p /www && echo {src} > /www/index.html && httpd -p 8080 -h /www")
    cli("snapshot", "create", src, "ready")


def fork(cli: Cli, src: str, name: str, host_port: int) -> dict:
    doc = cli.create(name, "--from-snapshot", f"{src}:ready", "-p", f"127.0.0.1:{host_port}:8080")
    cli.sh(name, f"echo {name} > /www/index.html")
    return doc


def source_and_forks(cli: Cli, src: str, port: int, ports: dict[str, int], *network: str) -> None:
    """``src`` (``-p 127.0.0.1:PORT:8080``) serving and snapshotted, then two forks of it on the next
    two ports; ``ports`` gets each workspace's host port as it comes up."""
    cli.create(src, "--profile", "tiny", *network, "-p", f"127.0.0.1:{port}:8080")
    cli("start", src)
    serve_and_snapshot(cli, src)
    ports[src] = port
    for i, name in enumerate((f"{src}-a", f"{src}-b"), 1):
        fork(cli, src, name, port + i)
        ports[name] = port + i


def test_nat_forks_get_their_own_tap_lease_mac_and_ports(snap_root: Path, world: tuple[Netns, Netns]) -> None:
    host, far = world
    server = far.serve("198.51.100.2", 8721)
    cli = Cli(host, snap_root)
    src, ports = f"n{uuid.uuid4().hex[:5]}", {}
    try:
        source_and_forks(cli, src, 18720, ports, "--network", "nat")
        seen: dict[str, dict] = {}
        for name in ports:  # the source last forked from still works, next to its forks
            net = cli.network(name)
            out = cli.sh(name, PROBE + "timeout 20 wget -qO- http://198.51.100.2:8721/")
            assert out.splitlines()[0] == net["guestMac"], out  # guest init took the workspace's MAC
            assert f"inet {net['guestAddress']}/30" in out and f"default via {net['hostAddress']}" in out, out
            assert f"{net['hostAddress']} host.microagent.internal" in out, out  # /etc/hosts rewritten
            assert f"\n{name}\n" in out and f"127.0.1.1 {name}" in out, out
            assert "hello from 198.51.100.1" in out, out  # masqueraded out through its own TAP
            assert host.get(f"http://127.0.0.1:{ports[name]}/") == name  # its own -p, its own guest
            seen[name] = net
        for key in ("guestMac", "guestAddress", "tap", "subnet"):
            assert len({net[key] for net in seen.values()}) == 3, (key, seen)
        links = host.run("ip", "-br", "link").stdout
        assert all(net["tap"] in links for net in seen.values())

        # restore in place: the same lease and MAC again, a new TAP behind the same gateway address
        cli("stop", src)
        cli("start", src, "--from-snapshot", "ready")
        out = cli.sh(src, PROBE + "cat /www/index.html; timeout 20 wget -qO- http://198.51.100.2:8721/")
        assert out.splitlines()[0] == seen[src]["guestMac"] and "hello from 198.51.100.1" in out, out
        assert host.get(f"http://127.0.0.1:{ports[src]}/") == src
    finally:
        cli.cleanup()
        server.kill()
    assert "mat" not in host.run("ip", "-br", "link").stdout
    assert host.run("nft", "list", "ruleset").stdout.strip() == ""
    leases = snap_root / "network" / "leases.json"
    assert not leases.exists() or not set(json.loads(leases.read_text())) & set(ports)


@pytest.mark.parametrize("provider", ["pasta", "slirp"])
def test_user_forks_get_their_own_provider_mac_and_ports(snap_root: Path, world: tuple[Netns, Netns],
                                                         provider: str) -> None:
    host, far = world
    near, outside = host.serve("127.0.0.1", 8731), far.serve("198.51.100.2", 8732)
    cli = Cli(host, snap_root, f"MICROAGENT_QEMU_USER_NETWORK={provider}")
    src, ports = f"u{uuid.uuid4().hex[:5]}", {}
    try:
        source_and_forks(cli, src, 18730, ports, "--network", "user", "--allow-host-loopback")
        seen: dict[str, dict] = {}
        for name in ports:  # each with its own slirp (inside its QEMU), or its own pasta and namespace
            net = cli.network(name)
            assert net["provider"] == provider
            if provider == "pasta":
                assert net["namespace"] in sh("ip", "netns", "list")
            out = cli.sh(name, PROBE + "timeout 20 wget -qO- http://10.0.2.2:8731/; echo; "
                                       "timeout 20 wget -qO- http://198.51.100.2:8732/")
            assert out.splitlines()[0] == net["guestMac"], out
            assert "inet 10.0.2.15/24" in out and "default via 10.0.2.2" in out, out  # user: one address for all
            assert "hello from 127.0.0.1" in out, out  # the host's loopback through its own pasta
            assert "hello from 198.51.100.1" in out, out
            assert host.get(f"http://127.0.0.1:{ports[name]}/") == name
            seen[name] = net
        for key in ("guestMac", "namespace", "pastaPid") if provider == "pasta" else ("guestMac",):
            assert len({net[key] for net in seen.values()}) == 3, (key, seen)
    finally:
        cli.cleanup()
        near.kill()
        outside.kill()
    namespaces = sh("ip", "netns", "list")
    assert not any(net.get("namespace") and net["namespace"] in namespaces for net in seen.values())


def test_publish_of_a_fork_is_checked_against_the_source(snap_root: Path, world: tuple[Netns, Netns]) -> None:
    """An isolated snapshot's fork cannot publish (no path in); a bad spec is refused before anything."""
    host, _ = world
    cli = Cli(host, snap_root)
    src = f"i{uuid.uuid4().hex[:5]}"
    try:
        cli.create(src, "--profile", "tiny")
        cli("start", src)
        cli("snapshot", "create", src, "ready")
        for spec, why in (("127.0.0.1:18740:8080", "isolated"), ("1:2:3:4", "expected")):
            proc = subprocess.run([*cli.enter, "create", f"{src}-x", "--json", "--from-snapshot", f"{src}:ready",
                                   "-p", spec], capture_output=True, text=True, timeout=60)
            doc = json.loads(proc.stdout or "{}")
            assert proc.returncode == 2 and doc["error"]["kind"] == "permanent", doc  # a usage error
            assert why in doc["error"]["message"], doc
            assert not (snap_root / "workspaces" / f"{src}-x").exists()
    finally:
        cli.cleanup()
