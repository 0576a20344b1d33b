"""The channel helper (router) between many host clients and one real guest agent.

The guest side is the real C guest init in agent mode listening on a Unix
socket, exactly where QEMU's chardev socket would be; the router is the real
``python -m microagent.channel.router`` process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from microagent.channel import ExecRequest, open_channel
from microagent.channel.exec import run, start
from microagent.errors import ChannelClosed


class Rig:
    def __init__(self, binary: Path, tmp: Path) -> None:
        self.guest_sock = tmp / "channel.sock"
        self.control = tmp / "control.sock"
        self.agent = subprocess.Popen([str(binary), "--agent", "--listen", str(self.guest_sock)],
                                      stderr=open(tmp / "agent.log", "wb"))
        self.router = subprocess.Popen(
            [sys.executable, "-m", "microagent.channel.router", "--guest", f"unix:{self.guest_sock}",
             "--listen", str(self.control), "--hello-timeout", "10"],
            stderr=open(tmp / "router.log", "wb"))
        deadline = time.monotonic() + 10
        while not self.control.exists():
            assert self.router.poll() is None, (tmp / "router.log").read_text()
            assert time.monotonic() < deadline, "router never became ready"
            time.sleep(0.01)

    def close(self) -> None:
        for p in (self.router, self.agent):
            if p.poll() is None:
                p.kill()
            p.wait(5)


@pytest.fixture
def rig(agent_binary: Path, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(agent_binary, tmp_path)
    yield r
    r.close()


def test_many_clients_at_once(rig: Rig) -> None:
    results: dict[int, bytes] = {}

    def client(i: int) -> None:
        with open_channel(rig.control) as conn:
            results[i] = run(conn, ExecRequest(argv=["sh", "-c", f"sleep 0.2; echo client{i}"])).stdout

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == {i: f"client{i}\n".encode() for i in range(6)}
    assert time.monotonic() - t0 < 5, "sessions of different clients must run concurrently"


def test_a_client_hello_does_not_reset_other_clients(rig: Rig) -> None:
    with open_channel(rig.control) as a:
        session = start(a, ExecRequest(argv=["sh", "-c", "sleep 1; echo survived"]))
        with open_channel(rig.control) as b:  # b's HELLO must not reach the guest
            assert run(b, ExecRequest(argv=["true"])).exit_code == 0
        assert session.wait(10).stdout == b"survived\n"


def test_disconnecting_client_closes_its_sessions_in_the_guest(rig: Rig, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    a = open_channel(rig.control)
    start(a, ExecRequest(argv=["sh", "-c", f"echo $$ > {marker}; exec sleep 60"]))
    deadline = time.monotonic() + 5
    while not marker.exists() or not marker.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pid = int(marker.read_text())
    a.close()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]


def test_guest_going_away_ends_router_and_fails_clients(rig: Rig) -> None:
    conn = open_channel(rig.control)
    session = start(conn, ExecRequest(argv=["sleep", "60"]))
    rig.agent.kill()
    with pytest.raises(ChannelClosed):
        session.wait(10)
    assert rig.router.wait(10) == 0
    assert not rig.control.exists()


def test_router_gives_up_without_a_guest(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "microagent.channel.router", "--guest",
                           f"unix:{tmp_path / 'nothing.sock'}", "--listen", str(tmp_path / "c.sock"),
                           "--hello-timeout", "0.5"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3 and "cannot connect to the guest" in proc.stderr
    assert not (tmp_path / "c.sock").exists()


def test_tcp_control_endpoint_needs_the_token(agent_binary: Path, tmp_path: Path) -> None:
    """The Windows path (no AF_UNIX): loopback TCP + a token from control.json, run here for real."""
    import json
    import socket

    from microagent.channel.mux import ChannelConnection
    from microagent.channel.stream import SocketStream
    from microagent.errors import PolicyDenied

    guest_sock = tmp_path / "channel.sock"
    agent = subprocess.Popen([str(agent_binary), "--agent", "--listen", str(guest_sock)],
                             stderr=open(tmp_path / "agent.log", "wb"))
    router = subprocess.Popen(
        [sys.executable, "-m", "microagent.channel.router", "--guest", f"unix:{guest_sock}",
         "--listen", str(tmp_path / "control.sock"), "--transport", "tcp", "--hello-timeout", "10"],
        stderr=open(tmp_path / "router.log", "wb"))
    try:
        control = tmp_path / "control.json"
        deadline = time.monotonic() + 10
        while not control.exists():
            assert router.poll() is None and time.monotonic() < deadline, (tmp_path / "router.log").read_text()
            time.sleep(0.01)
        doc = json.loads(control.read_text())
        assert doc["transport"] == "tcp" and doc["address"].startswith("127.0.0.1:") and len(doc["token"]) == 32
        assert control.stat().st_mode & 0o077 == 0
        assert not (tmp_path / "control.sock").exists()
        with open_channel(control) as conn:
            assert run(conn, ExecRequest(argv=["echo", "via-tcp"])).stdout == b"via-tcp\n"
        host, port = doc["address"].rsplit(":", 1)
        for token in ("", "0" * 32):
            sock = socket.create_connection((host, int(port)), timeout=5)
            with pytest.raises(PolicyDenied, match="token"):
                ChannelConnection.open(SocketStream(sock), hello_timeout=5, hello_fields={"token": token} if token else None)
    finally:
        for p in (router, agent):
            p.kill()
            p.wait(5)


def test_the_router_counts_exec_sessions_in_the_run_dir(rig: Rig, tmp_path: Path) -> None:
    """``stats``' exec count: exec sessions only (not get/put), published in exec-count.json (0600)
    at most twice a second; a helper that starts again continues the count."""
    import json

    from microagent.channel.files import put
    from microagent.waiting import wait_until
    from microagent.workspace.stats import exec_count

    count_file = tmp_path / "exec-count.json"
    assert exec_count(tmp_path) is None  # nothing counted yet
    with open_channel(rig.control) as conn:
        for _ in range(3):
            assert run(conn, ExecRequest(argv=["true"])).exit_code == 0
        put(conn, str(tmp_path / "put-target"), b"x")  # a file session is not an exec
    assert wait_until(lambda: exec_count(tmp_path) == 3, 5.0, 0.05), exec_count(tmp_path)
    assert count_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(count_file.read_text()) == {"execs": 3}
    rig.router.kill()
    rig.router.wait(5)
    rig.control.unlink(missing_ok=True)
    rig.router = subprocess.Popen(
        [sys.executable, "-m", "microagent.channel.router", "--guest", f"unix:{rig.guest_sock}",
         "--listen", str(rig.control), "--hello-timeout", "10"], stderr=open(tmp_path / "router2.log", "wb"))
    assert wait_until(rig.control.exists, 10.0, 0.01)
    with open_channel(rig.control) as conn:
        assert run(conn, ExecRequest(argv=["true"])).exit_code == 0
    assert wait_until(lambda: exec_count(tmp_path) == 4, 5.0, 0.05), exec_count(tmp_path)


def test_router_connects_again_when_the_guest_drops_it_during_hello(agent_binary: Path, tmp_path: Path) -> None:
    """A Firecracker guest resetting its vsock connections after a snapshot may drop the helper's
    first connection before answering HELLO: with ``--reconnect-during-hello`` (what the
    Firecracker supervisor passes) the helper connects again (until its timeout)."""
    import socket

    guest_sock, control = tmp_path / "channel.sock", tmp_path / "control.sock"
    first = socket.socket(socket.AF_UNIX)
    first.bind(str(guest_sock))
    first.listen(1)
    router = subprocess.Popen(
        [sys.executable, "-m", "microagent.channel.router", "--guest", f"unix:{guest_sock}",
         "--listen", str(control), "--hello-timeout", "20", "--reconnect-during-hello"],
        stderr=open(tmp_path / "router.log", "wb"))
    agent = None
    try:
        conn, _ = first.accept()
        conn.settimeout(10)
        assert conn.recv(4096)  # the router's HELLO: dropped, unanswered
        conn.close()
        first.close()
        guest_sock.unlink()
        agent = subprocess.Popen([str(agent_binary), "--agent", "--listen", str(guest_sock)],
                                 stderr=open(tmp_path / "agent.log", "wb"))
        deadline = time.monotonic() + 15
        while not control.exists():
            assert router.poll() is None, (tmp_path / "router.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "router.log").read_text()
            time.sleep(0.01)
        with open_channel(control) as channel:
            assert run(channel, ExecRequest(argv=["echo", "again"])).stdout == b"again\n"
        assert "guest dropped the channel during HELLO" in (tmp_path / "router.log").read_text()
    finally:
        for proc in (router, agent):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_without_reconnect_a_guest_closing_during_hello_ends_the_helper(tmp_path: Path) -> None:
    """Elsewhere a channel closed during HELLO means the VM went away: the helper exits at
    once (status 4) instead of lingering until its timeout."""
    import socket

    guest_sock, control = tmp_path / "channel.sock", tmp_path / "control.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(guest_sock))
    listener.listen(1)
    router = subprocess.Popen(
        [sys.executable, "-m", "microagent.channel.router", "--guest", f"unix:{guest_sock}",
         "--listen", str(control), "--hello-timeout", "30"], stderr=open(tmp_path / "router.log", "wb"))
    try:
        conn, _ = listener.accept()
        conn.settimeout(10)
        assert conn.recv(4096)
        conn.close()
        assert router.wait(10) == 4
    finally:
        listener.close()
        if router.poll() is None:
            router.kill()
            router.wait(5)
