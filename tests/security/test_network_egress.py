"""A guest on ``user`` or ``nat`` reaches the internet, not the host's neighbourhood.

Real QEMU guests.  Everything runs in two network namespaces the test makes:
``host`` (where microagent runs) and ``world`` behind it, joined by a veth.
``world`` holds one server on a public-looking address (198.51.100.2) and
on addresses of every range a guest must not reach (RFC 1918, CGNAT, cloud
metadata), plus a DNS server on a private address (the resolver the host is
configured with); ``host`` has a server on its loopback.  The guest tries
all of them at once; the servers log which of their addresses were reached.
No packet leaves the test's namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest
from support_netns import HOST_ADDRESS, WORLD_ADDRESS, Netns, host_and_world

from microagent.paths import host_arch, kernel_dir, state_root

MICROAGENT = str(Path(sys.executable).parent / "microagent")
PUBLIC = WORLD_ADDRESS
#: world addresses a guest must never reach, by what they stand for
PRIVATE = {"rfc1918-10": "10.99.0.2", "rfc1918-172": "172.16.9.2", "rfc1918-192": "192.168.77.2",
           "cgnat": "100.64.9.2", "metadata": "169.254.169.254"}
RESOLVER = "10.99.0.53"  # private, yet the guest's DNS must work through it
ANSWER = "203.0.113.7"
PORT = 8781

SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        here = self.connection.getsockname()[0]
        body = ("hello " + here + " from " + self.client_address[0]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
        print(here, flush=True)
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""

DNS = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 53))
while True:
    q, peer = s.recvfrom(512)
    end = q.index(b"\\0", 12) + 5
    qtype = struct.unpack("!H", q[end - 4:end - 2])[0]
    answer = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(sys.argv[2]) if qtype == 1 else b""
    s.sendto(q[:2] + b"\\x81\\x80" + q[4:6] + struct.pack("!HHH", 1 if answer else 0, 0, 0) + q[12:end] + answer, peer)
"""


class World:
    """``host`` and ``world`` namespaces, the servers, and the host's resolver setting."""

    def __init__(self, host: Netns, world: Netns, world_end: str) -> None:
        self.host, self.world = host, world
        for address in (*PRIVATE.values(), RESOLVER):
            self.world.run("ip", "addr", "add", f"{address}/32", "dev", world_end)
        self.world.run("ip", "route", "add", "default", "via", HOST_ADDRESS)
        # `ip netns exec` shows /etc/netns/<name>/resolv.conf as /etc/resolv.conf
        self.etc = Path("/etc/netns") / self.host.name
        self.etc.mkdir(parents=True)
        (self.etc / "resolv.conf").write_text(f"nameserver {RESOLVER}\n")
        self.far = self.world.serve("0.0.0.0", PORT, SERVER)
        # the host's services: on its loopback, on its LAN address, on every address
        self.near = [self.host.serve("127.0.0.1", PORT, SERVER), self.host.serve(HOST_ADDRESS, PORT + 1, SERVER),
                     self.host.serve("0.0.0.0", PORT + 2, SERVER)]
        self.dns = self.world.spawn(DNS, RESOLVER, ANSWER)

    def reached(self) -> tuple[list[str], list[str]]:
        """The addresses of ``world`` and of ``host`` that received a connection."""
        for proc in (self.far, *self.near, self.dns):
            proc.kill()
        far = self.far.communicate()[0].split()
        near = [address for proc in self.near for address in proc.communicate()[0].split()]
        self.dns.communicate()
        return far, near

    def close(self) -> None:
        for proc in (self.far, *self.near, self.dns):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        shutil.rmtree(self.etc, ignore_errors=True)


@pytest.fixture
def world() -> Iterator[World]:
    with host_and_world("mae") as namespaces:
        w = World(*namespaces)
        yield w
        w.close()


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, pasta's namespace, nat's TAP")
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed (run 'make install')")
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if not (src / "kernel.json").is_file():
        pytest.skip(f"no qemu kernel in {src} (run 'make install')")
    root = tmp_path_factory.mktemp("egress")
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    return root


def probe_script(gateway: str, extra: dict[str, str]) -> str:
    """Try every target at once; print ``OK <name>`` or ``NO <name>`` for each, and the DNS answer."""
    targets = {"public": f"{PUBLIC}:{PORT}", "gateway": gateway,
               **{name: f"{addr}:{PORT}" for name, addr in PRIVATE.items()}, **extra}
    tries = " ".join(f"(timeout 8 wget -qO- http://{where}/ >/dev/null 2>&1 && echo OK {name} || echo NO {name}) &"
                     for name, where in targets.items())
    return f"{tries} wait; nslookup probe.test 2>&1 | grep -A9 '^Name:' | tr '\\n' ' '"


def outcomes(stdout: str) -> dict[str, bool]:
    return {line.split()[1]: line.split()[0] == "OK" for line in stdout.splitlines()
            if line[:3] in ("OK ", "NO ")}


def run_guest(world: World, state: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = world.host.run(MICROAGENT, "run", "--json", *args, timeout=300,
                          env={"MICROAGENT_STATE_DIR": str(state), "MICROAGENT_BACKEND": "qemu", **(env or {})})
    doc = json.loads(proc.stdout or "{}")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    out: str = doc["result"]["stdout"]
    return out


@pytest.mark.vm
@pytest.mark.parametrize("allow", [False, True], ids=["default", "allow-host-loopback"])
def test_user_guest_reaches_only_the_internet(world: World, state: Path, allow: bool) -> None:
    out = run_guest(world, state, "--network", "user", *(["--allow-host-loopback"] if allow else []),
                    "builtin:busybox", "--", "sh", "-c", probe_script(f"10.0.2.2:{PORT}", {}))
    far, near = world.reached()
    assert outcomes(out) == {"public": True, "gateway": allow, **{name: False for name in PRIVATE}}, out
    assert far == [PUBLIC]  # no private address of the world saw a connection
    assert near == (["127.0.0.1"] if allow else [])  # the host's loopback only when asked for
    assert ANSWER in out  # DNS through pasta's forwarder to the (private) host resolver


@pytest.mark.vm
@pytest.mark.parametrize("engine,allow", [("nft", False), ("iptables", False), ("nft", True)],
                         ids=["nft", "iptables", "nft-allow-host-loopback"])
def test_nat_guest_reaches_only_the_internet(world: World, state: Path, engine: str, allow: bool) -> None:
    """The gateway (the TAP's host address) is the host: closed unless allowed; the host's
    other addresses stay closed either way."""
    script = probe_script(f"host.microagent.internal:{PORT + 2}", {"host-lan": f"198.51.100.1:{PORT + 1}"})
    out = run_guest(world, state, "--network", "nat", *(["--allow-host-loopback"] if allow else []),
                    "builtin:busybox", "--", "sh", "-c", script, env={"MICROAGENT_NAT_FIREWALL": engine})
    far, near = world.reached()
    assert outcomes(out) == {"public": True, "gateway": allow, "host-lan": False,
                             **{name: False for name in PRIVATE}}, out
    assert far == [PUBLIC]
    assert len(near) == (1 if allow else 0) and all(a.startswith("10.213.") for a in near)
    assert ANSWER in out  # the host's nameserver, in a private range, still answers
    assert "microagent" not in world.host.run("nft", "list", "ruleset").stdout.lower()
