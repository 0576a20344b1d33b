"""Flow control against the real guest in agent mode."""

from __future__ import annotations

import threading
import time

from microagent.channel import ChannelConnection, ErrorEvent, ExecRequest
from microagent.channel.exec import run, start
from microagent.channel.frames import INITIAL_WINDOW

HUNDRED_MIB = 100 << 20


def test_100mib_stdout_with_small_exec_alongside(conn: ChannelConnection) -> None:
    total = [0]
    h = start(conn, ExecRequest(["head", "-c", str(HUNDRED_MIB), "/dev/zero"]), stdout=lambda b: total.__setitem__(0, total[0] + len(b)))
    time.sleep(0.1)
    t0 = time.monotonic()
    r = run(conn, ExecRequest(["echo", "small"]), timeout=5)
    latency = time.monotonic() - t0
    assert r.stdout == b"small\n"
    assert latency < 2, f"small exec took {latency:.2f}s behind a 100 MiB transfer"
    big = h.wait(60)
    assert big.ok and total[0] == HUNDRED_MIB


def test_slow_reader_throttles_only_its_session(conn: ChannelConnection) -> None:
    release = threading.Event()
    total = [0]

    def slow_sink(b: bytes) -> None:
        release.wait(30)
        total[0] += len(b)

    h = start(conn, ExecRequest(["head", "-c", str(HUNDRED_MIB), "/dev/zero"]), stdout=slow_sink)
    time.sleep(0.5)  # the guest runs out of credit and stops reading the pipe
    s = h.session
    # the host never holds more than one window of unconsumed output
    assert s._recv_used[1] <= INITIAL_WINDOW
    for _ in range(3):
        t0 = time.monotonic()
        r = run(conn, ExecRequest(["sh", "-c", "echo quick"]), timeout=5)
        assert r.stdout == b"quick\n" and time.monotonic() - t0 < 2
    assert not h.done
    release.set()
    big = h.wait(60)
    assert big.ok and total[0] == HUNDRED_MIB


def test_guest_enforces_stdin_credit(conn: ChannelConnection) -> None:
    s = conn.open_session("exec", argv=["sleep", "10"], stdin=True)
    s._send_credit[0] = 10 * INITIAL_WINDOW  # misbehave: ignore the guest's window
    try:
        s.send_data(0, bytes(2 * INITIAL_WINDOW), timeout=5)
    except Exception:
        pass  # the guest may end the session while we are still sending
    ev = s.recv(5)
    while not isinstance(ev, ErrorEvent):
        ev = s.recv(5)
    assert ev.code == "flow_control" and not ev.local
    assert run(conn, ExecRequest(["echo", "ok"]), timeout=5).ok


def test_stdin_larger_than_window_to_slow_consumer(conn: ChannelConnection) -> None:
    data = bytes(range(256)) * (8 * INITIAL_WINDOW // 256)
    r = run(conn, ExecRequest(["sh", "-c", "sleep 0.3; wc -c"], stdin=data), timeout=20)
    assert r.stdout.strip() == str(len(data)).encode()
