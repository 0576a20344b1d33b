"""Unit tests for microagent.channel.mux and the session kinds, against FakeGuest."""

from __future__ import annotations

import io
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from unit.channel.fake_guest import FakeGuest, fake_pair

from microagent.channel import (
    ChannelConnection,
    ChannelTimeout,
    DataEvent,
    ErrorEvent,
    ExecRequest,
    ExitEvent,
    GuestConnectFailed,
    GuestNotFound,
    PortPublisher,
    ProtocolError,
    SessionEnded,
    SessionState,
    SocketStream,
    VersionMismatch,
)
from microagent.channel.exec import run, start
from microagent.channel.files import get, get_bytes, put
from microagent.channel.forward import open_forward
from microagent.channel.frames import INITIAL_WINDOW, Frame, FrameType, encode_frame, json_frame
from microagent.errors import ChannelClosed, InvalidRequest, NotFound


def _connect(**kwargs: object) -> tuple[ChannelConnection, FakeGuest]:
    host, guest = fake_pair(**kwargs)
    return ChannelConnection.open(SocketStream(host), name="fake", hello_timeout=2), guest


@pytest.fixture
def pair() -> Iterator[tuple[ChannelConnection, FakeGuest]]:
    conn, guest = _connect()
    yield conn, guest
    conn.close()
    guest.vanish()


def _wait_until(pred, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


# ------------------------------------------------------------- handshake


def test_hello(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair
    assert conn.guest_hello is not None and conn.guest_hello["role"] == "guest"
    assert {"exec", "put", "get", "forward", "shutdown"} <= conn.features
    first = guest.received_frames[0]
    assert isinstance(first, Frame) and first.session == 0 and first.type == FrameType.HELLO


def test_hello_no_answer_times_out() -> None:
    host, guest = fake_pair(answer_hello=False)
    t0 = time.monotonic()
    with pytest.raises(ChannelTimeout):
        ChannelConnection.open(SocketStream(host), hello_timeout=0.3)
    assert time.monotonic() - t0 < 2
    guest.vanish()


def test_hello_version_mismatch() -> None:
    host, guest = fake_pair(version=2)
    with pytest.raises(VersionMismatch):
        ChannelConnection.open(SocketStream(host), hello_timeout=2)
    guest.vanish()


def test_hello_error_version_mismatch_frame() -> None:
    host, guest_sock = socket.socketpair()

    def guest() -> None:
        guest_sock.recv(4096)
        guest_sock.sendall(json_frame(0, FrameType.ERROR, {"code": "version_mismatch", "message": "v1 only"}))

    threading.Thread(target=guest, daemon=True).start()
    with pytest.raises(VersionMismatch):
        ChannelConnection.open(SocketStream(host), hello_timeout=2)
    guest_sock.close()


def test_hello_guest_gone() -> None:
    host, guest_sock = socket.socketpair()
    guest_sock.close()
    with pytest.raises(ChannelClosed):
        ChannelConnection.open(SocketStream(host), hello_timeout=2)


# ------------------------------------------------------------------ exec


def test_exec_collects(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    r = run(conn, ExecRequest(["echo", "hi", "there"]), timeout=5)
    assert r.ok and r.stdout == b"hi there\n" and r.stderr == b""
    assert r.pid == 4242
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r.started_at)
    assert run(conn, ExecRequest(["exit", "3"])).exit_code == 3
    assert run(conn, ExecRequest(["stderr", "oops"])).stderr == b"oops"
    assert conn.session_count() == 0


def test_exec_failed_to_start(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    r = run(conn, ExecRequest(["missing"]))
    assert r.status == "failed_to_start" and r.exit_code == 127
    assert r.error == {"code": "not_found", "message": "missing: not found"}
    assert r.started_at == ""


def test_exec_request_validation(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    with pytest.raises(InvalidRequest):
        run(conn, ExecRequest([]))
    with pytest.raises(InvalidRequest):
        run(conn, ExecRequest(["env"], env=["NOEQUALS"]))
    r = run(conn, ExecRequest(["env"], env={"A": "1", "B": "x=y"}))
    assert r.stdout == b"A=1\nB=x=y"


def test_exec_stdin_bytes_and_file(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    data = os.urandom(3 * INITIAL_WINDOW + 17)
    assert run(conn, ExecRequest(["cat"], stdin=data), timeout=10).stdout == data
    assert run(conn, ExecRequest(["cat"], stdin=io.BytesIO(data)), timeout=10).stdout == data
    assert run(conn, ExecRequest(["cat"], stdin=b""), timeout=10).stdout == b""


def test_exec_streaming_sinks(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    got: list[bytes] = []
    err = io.BytesIO()
    h = start(conn, ExecRequest(["zeros", str(600_000)]), stdout=got.append, stderr=err)
    r = h.wait(10)
    assert r.ok and r.stdout == b"" and sum(map(len, got)) == 600_000
    h2 = start(conn, ExecRequest(["stderr", "e"]), stderr=err)
    h2.wait(5)
    assert err.getvalue() == b"e"


def test_exec_interactive_write_resize_signal(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    h = start(conn, ExecRequest(["cat"], stdin=True))
    h.write(b"abc")
    h.close_stdin()
    assert h.wait(5).stdout == b"abc"
    h = start(conn, ExecRequest(["wait-control"], pty=True))
    assert h.wait_started(5) == 4242
    assert h.resize(40, 100)
    assert h.wait(5).stdout == b"{'resize': {'rows': 40, 'cols': 100}}"
    assert not h.resize(1, 1)  # ended: a no-op
    assert not h.signal(2)


def test_exec_host_timeout_closes_session(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair
    with pytest.raises(ChannelTimeout):
        run(conn, ExecRequest(["sleep", "30"]), timeout=0.2)
    _wait_until(lambda: any(isinstance(f, Frame) and f.type == FrameType.CLOSE for f in guest.received_frames))
    _wait_until(lambda: not guest.sessions)


def test_concurrent_sessions_from_threads(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            payload = bytes([i]) * (50_000 + i * 1000)
            results[i] = run(conn, ExecRequest(["cat"], stdin=payload), timeout=20).stdout
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for i in range(24):
        assert results[i] == bytes([i]) * (50_000 + i * 1000)
    ids = [f.session for f in pair[1].received_frames if isinstance(f, Frame) and f.type == FrameType.OPEN]
    assert len(ids) == len(set(ids)) and 0 not in ids


# ---------------------------------------------------------- flow control


def test_send_waits_for_credit() -> None:
    conn, guest = _connect(hold_credit=True)
    try:
        s = conn.open_session("exec", argv=["count-stdin"], stdin=True)
        s.send_data(0, bytes(INITIAL_WINDOW), timeout=1)  # the whole initial window
        assert s.send_credit(0) == 0
        t0 = time.monotonic()
        with pytest.raises(ChannelTimeout):
            s.send_data(0, b"x", timeout=0.3)
        assert time.monotonic() - t0 >= 0.25
        # credit arrives: the blocked sender continues
        done = threading.Event()

        def sender() -> None:
            s.send_data(0, bytes(1000), timeout=5)
            done.set()

        threading.Thread(target=sender, daemon=True).start()
        time.sleep(0.1)
        assert not done.is_set()
        guest.grant(s.id, 0, 4096)
        assert done.wait(2)
        assert s.send_credit(0) == 4096 - 1000
        assert not any(code == "flow_control" for _, code in guest.errors_sent)
    finally:
        conn.close()
        guest.vanish()


def test_receiver_grants_only_after_consumption(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair
    s = conn.open_session("exec", argv=["zeros", str(4 * INITIAL_WINDOW)])
    _wait_until(lambda: s.id in guest.sessions and guest.sessions[s.id].credit[1] == 0)
    time.sleep(0.1)
    fs = guest.sessions[s.id]
    assert fs.credit[1] == 0  # the guest is throttled, not the channel
    assert run(conn, ExecRequest(["echo", "other"]), timeout=2).stdout == b"other\n"
    total = 0
    while True:
        ev = s.recv(5)
        if isinstance(ev, DataEvent):
            total += len(ev.data)
        elif isinstance(ev, ExitEvent):
            break
    assert total == 4 * INITIAL_WINDOW
    windows = [f for f in guest.received_frames if isinstance(f, Frame) and f.type == FrameType.WINDOW]
    assert windows and all(f.session == s.id for f in windows)


def test_guest_overrunning_credit_is_flow_control_error() -> None:
    conn, guest = _connect(ignore_credit=True)
    try:
        s = conn.open_session("exec", argv=["zeros", str(2 * INITIAL_WINDOW)])
        _wait_until(lambda: conn.session_count() == 0, 5)  # the host ended it
        events = []
        while True:
            ev = s.recv(5)
            events.append(ev)
            if isinstance(ev, (ErrorEvent, ExitEvent)):
                break
        assert isinstance(events[-1], ErrorEvent) and events[-1].local and events[-1].code == "flow_control"
        errs = [f for f in guest.received_frames if isinstance(f, Frame) and f.type == FrameType.ERROR]
        assert errs and errs[0].session == s.id
        with pytest.raises(SessionEnded):
            s.recv(1)
        assert run(conn, ExecRequest(["echo", "ok"]), timeout=2).ok
    finally:
        conn.close()
        guest.vanish()


# -------------------------------------------------------- malformed guest


def test_oversized_and_unknown_frames_from_guest(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair
    s1 = conn.open_session("exec", argv=["sleep", "5"])
    s2 = conn.open_session("exec", argv=["sleep", "5"])
    _wait_until(lambda: s1.id in guest.sessions and s2.id in guest.sessions)
    n = (1 << 20) + 10
    guest.send(struct.pack(">IIB", n, s1.id, 3) + bytes(n))
    guest.send(encode_frame(s2.id, 77, b"?"))
    guest.send(encode_frame(999, FrameType.DATA, b"\x01zz"))  # unknown session: ignored
    for s, code in ((s1, "frame_too_large"), (s2, "unknown_frame")):
        while True:
            ev = s.recv(5)
            if isinstance(ev, ErrorEvent):
                break
        assert ev.code == code and ev.local
        assert isinstance(ev.to_exception(), ProtocolError)
    _wait_until(lambda: {(s1.id, "frame_too_large"), (s2.id, "unknown_frame")} <= {
        (f.session, __import__("json").loads(f.payload)["code"])
        for f in guest.received_frames
        if isinstance(f, Frame) and f.type == FrameType.ERROR
    })
    assert run(conn, ExecRequest(["echo", "still"]), timeout=2).stdout == b"still\n"


# ---------------------------------------------------------- channel loss


def test_guest_vanishing_fails_every_waiter_promptly() -> None:
    conn, guest = _connect(hold_credit=True)
    h = start(conn, ExecRequest(["sleep", "30"]))
    s = conn.open_session("exec", argv=["count-stdin"], stdin=True)
    s.send_data(0, bytes(INITIAL_WINDOW))
    failures: list[BaseException] = []

    def blocked_sender() -> None:
        try:
            s.send_data(0, b"more")
        except BaseException as exc:
            failures.append(exc)

    t = threading.Thread(target=blocked_sender, daemon=True)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    guest.vanish()
    with pytest.raises(ChannelClosed):
        h.wait(5)
    t.join(5)
    assert time.monotonic() - t0 < 2
    assert len(failures) == 1 and isinstance(failures[0], ChannelClosed)
    with pytest.raises(ChannelClosed):
        while True:  # queued events first, then the failure
            s.recv(5)
    with pytest.raises(ChannelClosed):
        conn.open_session("exec", argv=["echo"])
    with pytest.raises(ChannelClosed):
        run(conn, ExecRequest(["echo"]))
    assert conn.wait_closed(2) and conn.closed
    conn.close()


def test_session_state_follows_its_life(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    s = conn.open_session("exec", argv=["cat"])  # ends only at our EOF: "echo" could end before the check
    assert s.state is SessionState.OPEN and not s.ended
    s.send_eof()
    _wait_until(lambda: s.state is SessionState.GUEST_ENDED)
    assert s.ended
    with pytest.raises(SessionEnded):
        s.send_control({"signal": 15})  # nothing is sent once the guest ended it
    assert isinstance(s.wait_final(5), ExitEvent)
    assert s.state is SessionState.FINISHED
    with pytest.raises(SessionEnded):
        s.recv(1)
    s.close()  # no CLOSE for an ended session
    assert s.state is SessionState.CLOSED

    closed = conn.open_session("exec", argv=["sleep", "30"])
    closed.close()
    assert closed.state is SessionState.CLOSED and closed.ended
    with pytest.raises(SessionEnded):
        closed.send_eof()

    failed = conn.open_session("exec", argv=["sleep", "30"])
    conn.close()
    assert failed.state is SessionState.FAILED and not failed.ended
    with pytest.raises(ChannelClosed):
        failed.send_eof()


def test_host_close_fails_waiters(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    h = start(conn, ExecRequest(["sleep", "30"]))
    threading.Timer(0.2, conn.close).start()
    with pytest.raises(ChannelClosed):
        h.wait(5)


def test_sink_failure_closes_session(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair

    def broken(_: bytes) -> None:
        raise BrokenPipeError("stdout gone")

    h = start(conn, ExecRequest(["zeros", "100000"]), stdout=broken)
    with pytest.raises(BrokenPipeError):
        h.wait(5)
    _wait_until(lambda: not guest.sessions)
    assert run(conn, ExecRequest(["echo", "x"])).ok


# ------------------------------------------------------- files, forward


def test_put_get(pair: tuple[ChannelConnection, FakeGuest], tmp_path) -> None:  # type: ignore[no-untyped-def]
    conn, guest = pair
    data = os.urandom(5 * INITIAL_WINDOW + 3)
    assert put(conn, "/etc/blob", data, mode=0o600) == len(data)
    assert guest.files["/etc/blob"] == (data, 0o600)
    src = tmp_path / "src.bin"
    src.write_bytes(data[:1000])
    assert put(conn, "/etc/small", str(src), mode=0o755) == 1000
    assert get_bytes(conn, "/etc/blob") == data
    dest = tmp_path / "out.bin"
    st = get(conn, "/etc/small", dest)
    assert dest.read_bytes() == data[:1000] and st.size == 1000 and st.permissions == 0o755
    assert (dest.stat().st_mode & 0o777) == 0o755
    with pytest.raises(GuestNotFound) as ei:
        get(conn, "/nope", tmp_path / "x")
    assert isinstance(ei.value, NotFound) and ei.value.code == "not_found"
    assert not (tmp_path / "x").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "src.bin"]
    with pytest.raises(GuestNotFound):
        put(conn, "/missing/x", data)  # guest errors before reading all input
    with pytest.raises(InvalidRequest):
        put(conn, "relative", b"")
    with pytest.raises(NotFound):
        put(conn, "/x", str(tmp_path / "does-not-exist"))
    assert conn.session_count() == 0


def test_forward_echo_and_publish(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    with open_forward(conn, 8080) as fwd:
        payload = os.urandom(700_000)
        t = threading.Thread(target=lambda: (fwd.sendall(payload), fwd.shutdown_write()))
        t.start()
        got = bytearray()
        while chunk := fwd.recv(10_000, timeout=5):
            got += chunk
        t.join()
        assert bytes(got) == payload
    with pytest.raises(GuestConnectFailed):
        open_forward(conn, 1)
    with PortPublisher(conn, 8080) as pub:
        with socket.create_connection(pub.address, timeout=5) as c:
            c.sendall(b"ping")
            c.shutdown(socket.SHUT_WR)
            buf = b""
            while chunk := c.recv(100):
                buf += chunk
        assert buf == b"ping"


def test_shutdown_then_channel_ends(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, _ = pair
    conn.shutdown("poweroff", grace_s=1)
    assert conn.wait_closed(2)
    with pytest.raises(InvalidRequest):
        conn.shutdown("explode")


# --------------------------------------------------------------- stream


def test_firecracker_vsock_handshake(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from microagent.channel import connect_firecracker_vsock

    path = str(tmp_path / "v.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    seen: list[bytes] = []

    def firecracker() -> None:
        c, _ = srv.accept()
        line = b""
        while not line.endswith(b"\n"):
            line += c.recv(1)
        seen.append(line)
        # OK line and the guest's first bytes in one segment: nothing may be lost
        c.sendall(b"OK 1073741824\n")
        FakeGuest(c)

    threading.Thread(target=firecracker, daemon=True).start()
    conn = ChannelConnection.open(connect_firecracker_vsock(path, 1024, timeout=2), hello_timeout=2)
    assert seen == [b"CONNECT 1024\n"]
    assert run(conn, ExecRequest(["echo", "vsock"])).stdout == b"vsock\n"
    conn.close()
    srv.close()


def test_connect_unix_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from microagent.channel import connect_unix

    with pytest.raises(ChannelClosed):
        connect_unix(tmp_path / "nothing.sock", timeout=1)
