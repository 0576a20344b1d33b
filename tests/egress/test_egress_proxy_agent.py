"""The egress proxy end to end with the real guest init in agent mode.

guest init (``microagent-init --agent``) listens on the proxy port of this
host's loopback as it would inside a VM, carries each connection over the
channel as an ``accept`` session to the real helper process
(``python -m microagent.egress.helper``), whose proxy dials upstream servers
on this machine's loopback.  The VM tests (test_egress_vm.py) repeat the
core of it inside a real guest.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from microagent.fsutil import atomic_write

from egress.upstream import client_hello, echo_upstream, http_upstream


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc: a probe would be proxied)."""
    entry = f"0100007F:{port:04X} 00000000:0000 0A"
    return entry in Path("/proc/net/tcp").read_text()


class Rig:
    def __init__(self, binary: Path, tmp: Path, hosts: list[str], cidrs: list[str],
                 secrets: list[dict[str, object]] | None = None, env: dict[str, str] | None = None,
                 module: str = "microagent.egress.helper") -> None:
        """``module``: the helper with the proxy in it (the Hyper-V backend has its own)."""
        self.tmp = tmp
        self.port = _free_port()
        self.policy = tmp / "egress.json"
        self.set_policy(hosts, cidrs, secrets)
        guest_sock = tmp / "channel.sock"
        self.control = tmp / "control.sock"
        self.agent = subprocess.Popen([str(binary), "--agent", "--listen", str(guest_sock)],
                                      stderr=open(tmp / "agent.log", "wb"))
        self.helper = subprocess.Popen(
            [sys.executable, "-m", module, "--egress-policy", str(self.policy),
             "--egress-workspace", "ws1", "--egress-port", str(self.port),
             "--guest", f"unix:{guest_sock}", "--listen", str(self.control), "--hello-timeout", "10"],
            stderr=open(tmp / "router.log", "wb"), env={**os.environ, **(env or {})})
        # In agent mode guest init listens when the first accept session arrives (in a VM: at boot).
        deadline = time.monotonic() + 10
        while not _listening(self.port):
            assert self.helper.poll() is None, self.router_log()
            assert time.monotonic() < deadline, "egress proxy never started:\n" + self.router_log()
            time.sleep(0.02)

    def router_log(self) -> str:
        return (self.tmp / "router.log").read_text(errors="replace")

    def set_policy(self, hosts: list[str], cidrs: list[str], secrets: list[dict[str, object]] | None = None) -> None:
        # atomically, as `egress set` does: the helper may read it at any moment
        atomic_write(self.policy, json.dumps({"allowHosts": hosts, "allowCidrs": cidrs,
                                              "secrets": secrets or []}).encode())
        os.utime(self.policy, ns=(time.time_ns(), time.time_ns()))

    def request(self, raw: bytes, *, read: bool = True) -> bytes:
        """Send ``raw`` to the guest-side proxy port; everything it answers until it closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as s:
            s.sendall(raw)
            if not read:
                return b""
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    def audit(self) -> list[dict[str, object]]:
        path = self.tmp / "egress.log"
        for _ in range(100):  # the record is written when the connection has ended on the host
            if path.exists():
                break
            time.sleep(0.05)
        return [json.loads(line) for line in path.read_text().splitlines()]

    def close(self) -> None:
        for p in (self.helper, self.agent):
            if p.poll() is None:
                p.kill()
            p.wait(5)


@pytest.fixture
def make_rig(agent_binary: Path, tmp_path: Path) -> Iterator[object]:
    rigs: list[Rig] = []

    def make(hosts: list[str], cidrs: list[str] = (), **kw: object) -> Rig:  # type: ignore[assignment]
        rig = Rig(agent_binary, tmp_path, list(hosts), list(cidrs), **kw)  # type: ignore[arg-type]
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def wait_audit(rig: Rig, n: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while True:
        records = rig.audit()
        if len(records) >= n or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_allowed_host_is_proxied_and_audited(make_rig) -> None:
    with http_upstream() as up:
        rig = make_rig(["localhost"], ["127.0.0.0/8"])
        port = up.server_address[1]
        answer = rig.request(f"GET http://localhost:{port}/hello HTTP/1.1\r\nHost: evil.example\r\n"
                             f"Proxy-Connection: keep-alive\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.0 200"), answer
    # Host comes from the URL, never from the guest's header (no fronting another name).
    assert f"upstream saw /hello host=localhost:{port}".encode() in answer
    assert "Proxy-Connection" not in up.requests[0]
    [record] = wait_audit(rig, 1)
    assert record["decision"] == "allowed" and record["host"] == "localhost" and record["port"] == port
    assert record["address"] == "127.0.0.1" and record["workspace"] == "ws1"
    assert record["bytesReceived"] == len(answer) and record["bytesSent"] > 0
    assert oct((rig.tmp / "egress.log").stat().st_mode & 0o777) == "0o600"


def test_unlisted_host_gets_403(make_rig) -> None:
    with http_upstream() as up:
        rig = make_rig(["localhost"], ["127.0.0.0/8"])
        answer = rig.request(f"GET http://127.0.0.1:{up.server_address[1]}/ HTTP/1.1\r\n\r\n".encode())
        assert up.requests == []
    assert answer.startswith(b"HTTP/1.1 403 Forbidden"), answer
    assert b"127.0.0.1 is not on the egress allowlist" in answer
    [record] = wait_audit(rig, 1)
    assert record["decision"] == "refused" and record["host"] == "127.0.0.1"


def test_private_address_refused_unless_its_cidr_is_allowed(make_rig) -> None:
    with http_upstream() as up:
        rig = make_rig(["localhost"])
        url = f"http://localhost:{up.server_address[1]}/"
        answer = rig.request(f"GET {url} HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 403"), answer
        assert b"non-public range 127.0.0.0/8" in answer and up.requests == []
        rig.set_policy(["localhost"], ["127.0.0.0/8"])  # changed while running: next connection
        assert rig.request(f"GET {url} HTTP/1.1\r\n\r\n".encode()).startswith(b"HTTP/1.0 200")
    decisions = [r["decision"] for r in wait_audit(rig, 2)]
    assert decisions == ["refused", "allowed"]


def test_connect_to_443_needs_the_sni_of_the_connect_host(make_rig) -> None:
    try:
        upstream = echo_upstream("127.0.0.1", 443)
        seen = upstream.__enter__()
    except OSError as exc:
        print(f"SKIP: cannot listen on 127.0.0.1:443 here ({exc})")
        pytest.skip(f"127.0.0.1:443 unavailable: {exc}")
    try:
        rig = make_rig(["localhost"], ["127.0.0.0/8"])
        good = client_hello("localhost")
        answer = rig.request(b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n" + good)
        assert answer == b"HTTP/1.1 200 Connection established\r\n\r\nok"
        assert seen == [good]
        bad = rig.request(b"CONNECT localhost:443 HTTP/1.1\r\n\r\n" + client_hello("evil.example"))
        assert bad == b"HTTP/1.1 200 Connection established\r\n\r\n"  # then closed: nothing went up
        plain = rig.request(b"CONNECT localhost:443 HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n")
        assert plain == b"HTTP/1.1 200 Connection established\r\n\r\n"
        time.sleep(0.2)
        assert seen == [good]
    finally:
        upstream.__exit__(None, None, None)
    records = wait_audit(rig, 3)
    assert [r["decision"] for r in records] == ["allowed", "refused", "refused"]
    assert "does not match the CONNECT host" in str(records[1]["reason"])
    assert "must start with a TLS ClientHello" in str(records[2]["reason"])


def test_malformed_requests_get_400(make_rig) -> None:
    rig = make_rig(["localhost"], ["127.0.0.0/8"])
    assert rig.request(b"hello\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert rig.request(b"GET https://localhost/ HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert rig.request(b"CONNECT localhost HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert rig.helper.poll() is None and rig.agent.poll() is None


def test_an_entry_with_a_port_allows_only_that_port(make_rig) -> None:
    """``HOST:PORT`` on the list: plain HTTP and CONNECT to that port pass, any other port gets 403."""
    with http_upstream() as up, http_upstream() as other:
        port, other_port = up.server_address[1], other.server_address[1]
        rig = make_rig([f"localhost:{port}"], ["127.0.0.0/8"])
        ok = rig.request(f"GET http://localhost:{port}/p HTTP/1.1\r\n\r\n".encode())
        assert ok.startswith(b"HTTP/1.0 200") and b"upstream saw /p" in ok, ok
        refused = rig.request(f"GET http://localhost:{other_port}/p HTTP/1.1\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 403"), refused
        assert f"port {other_port} of localhost is not on the egress allowlist (allowed: {port})".encode() in refused
        tunnel = rig.request(f"CONNECT localhost:{port} HTTP/1.1\r\n\r\nGET /t HTTP/1.0\r\n\r\n".encode())
        assert tunnel.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.0 200"), tunnel
        assert b"upstream saw /t" in tunnel
        refused = rig.request(f"CONNECT localhost:{other_port} HTTP/1.1\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 403") and b"is not on the egress allowlist" in refused, refused
        # the broker is an https request on its port (443 unless named): checked the same way
        refused = rig.request(b"GET /https/localhost/x HTTP/1.1\r\n\r\n")
        assert b"port 443 of localhost is not on the egress allowlist" in refused, refused
        assert other.requests == [] and len(up.requests) == 2
    records = wait_audit(rig, 5)
    # a record is written when its connection ended on the host: in any order
    assert sorted((r["port"], r["decision"]) for r in records) == sorted([
        (port, "allowed"), (other_port, "refused"), (port, "allowed"), (other_port, "refused"), (443, "refused")])
