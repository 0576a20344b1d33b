"""The channel helper (channel/router.py) between hostile peers.

The router runs in-process over a :class:`FakeGuest` (or a raw socket that
plays a guest which stops reading), and clients are raw sockets, so each test
can break exactly one rule: stop reading, overrun credit, flood frames, skip
or fake the HELLO. Whoever breaks a rule loses its own session or
connection; the router's buffers stay bounded and other clients keep working.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit.channel.fake_guest import FakeSession, fake_pair

from microagent.channel import ChannelConnection, ExecRequest, SocketStream, open_channel
from microagent.channel.exec import run
from microagent.channel.frames import (
    INITIAL_WINDOW,
    MAX_DATA_CHUNK,
    Frame,
    FrameDecoder,
    FrameType,
    decode_data,
    decode_json,
    encode_data,
    encode_frame,
    encode_window,
    json_frame,
)
from microagent.channel.router import Router, bind_tcp_control
from microagent.errors import PolicyDenied

HELLO = json_frame(0, FrameType.HELLO, {"protocol": "microagent-channel", "version": 1, "role": "host"})


class RouterRig:
    """A Router serving in a thread; ``guest`` is a FakeGuest unless ``guest_sock`` is given."""

    def __init__(self, tmp: Path, *, tcp: bool = False, guest_sock: socket.socket | None = None,
                 **guest_kwargs: object) -> None:
        if guest_sock is None:
            host_end, self.guest = fake_pair(**guest_kwargs)
        else:
            host_end, self.guest = guest_sock, None
        self.router = Router(host_end, socket.socket(socket.AF_INET))
        self.router.handshake(5)
        self.router.listener.close()
        if tcp:
            self.router.listener, self.router.token = bind_tcp_control(str(tmp / "control.sock"))
            self.endpoint = tmp / "control.json"
            host, port = json.loads(self.endpoint.read_text())["address"].rsplit(":", 1)
            self.address: tuple[str, int] | str = (host, int(port))
        else:
            self.endpoint = tmp / "control.sock"
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(str(self.endpoint))
            listener.listen(64)
            self.router.listener = listener
            self.address = str(self.endpoint)
        self.router.listener.setblocking(False)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.router.serve()
        except BaseException as exc:  # noqa: BLE001 - the test asserts there is none
            self.errors.append(exc)

    def raw(self) -> socket.socket:
        family = socket.AF_INET if isinstance(self.address, tuple) else socket.AF_UNIX
        s = socket.socket(family)
        s.settimeout(10)
        s.connect(self.address)
        return s

    def client_peers(self) -> list:  # type: ignore[type-arg]
        return list(self.router.clients.values())

    def close(self) -> None:
        self.router.running = False
        self.thread.join(5)
        self.router.close()
        if self.guest is not None:
            self.guest.vanish()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RouterRig]:
    r = RouterRig(tmp_path)
    yield r
    r.close()
    assert not r.errors, r.errors


def _frames(sock: socket.socket, until, timeout: float = 10.0) -> list[Frame]:  # type: ignore[no-untyped-def]
    """Read frames until ``until(frame)`` is true (or EOF); return them all."""
    dec = FrameDecoder()
    out: list[Frame] = []
    sock.settimeout(timeout)
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return out
        for f in dec.feed(data):
            assert isinstance(f, Frame)
            out.append(f)
            if until(f):
                return out


def _error_code(f: Frame) -> str:
    return str(decode_json(f.payload).get("code")) if f.type == FrameType.ERROR else ""


def _hello(sock: socket.socket) -> None:
    sock.sendall(HELLO)
    _frames(sock, lambda f: f.session == 0 and f.type == FrameType.HELLO)


def _wait(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


# ------------------------------------------------------------ clients that stop reading


def test_a_client_that_grants_credit_but_never_reads_is_bounded_then_dropped(rig: RouterRig) -> None:
    rig.router.client_stall_s = 1.5
    sock = rig.raw()
    _hello(sock)
    sock.sendall(json_frame(1, FrameType.OPEN, {"kind": "exec", "argv": ["zeros", str(64 << 20)]}))
    sock.sendall(encode_frame(1, FrameType.WINDOW, encode_window(1, 64 << 20)))  # credit it will never use
    peak = 0
    end = time.monotonic() + 4
    while time.monotonic() < end:
        peak = max([peak] + [len(p.out) for p in rig.client_peers()])
        time.sleep(0.005)
    assert peak <= rig.router.client_out_high + (2 << 20), f"router buffered {peak} bytes for one client"
    assert rig.client_peers() == [], "a client that stops reading is disconnected"
    with open_channel(rig.endpoint) as other:  # everyone else carries on
        assert run(other, ExecRequest(["echo", "fine"]), timeout=10).stdout == b"fine\n"


def test_a_guest_that_stops_reading_cannot_grow_the_router(tmp_path: Path) -> None:
    host_end, guest_end = socket.socketpair()
    guest_end.settimeout(5)

    def answer_hello_then_stop_reading() -> None:
        dec = FrameDecoder()
        while not any(isinstance(f, Frame) and f.type == FrameType.HELLO for f in dec.feed(guest_end.recv(4096))):
            pass
        guest_end.sendall(json_frame(0, FrameType.HELLO, {"protocol": "microagent-channel", "version": 1,
                                                          "role": "guest", "features": []}))

    t = threading.Thread(target=answer_hello_then_stop_reading)
    t.start()
    r = RouterRig(tmp_path, guest_sock=host_end)
    t.join(5)
    try:
        sock = r.raw()
        _hello(sock)
        sock.sendall(json_frame(1, FrameType.OPEN, {"kind": "exec", "argv": ["x"]}))
        sock.settimeout(0.2)
        control = json_frame(1, FrameType.CONTROL, {"signal": 0, "pad": "x" * 60000})
        sent = 0
        try:
            while sent < (64 << 20):
                sock.sendall(control)
                sent += len(control)
        except (socket.timeout, BlockingIOError):
            pass
        assert sent < (64 << 20), "the router must stop reading clients while the guest does not read"
        assert len(r.router.guest.out) <= r.router.guest_out_high + (2 << 20)
        sock.close()
    finally:
        r.close()
        guest_end.close()
    assert not r.errors, r.errors


# ------------------------------------------------------------ credit, both ways


def test_a_guest_overrunning_the_client_credit_loses_the_session(tmp_path: Path) -> None:
    r = RouterRig(tmp_path, ignore_credit=True)
    try:
        sock = r.raw()
        _hello(sock)
        sock.sendall(json_frame(1, FrameType.OPEN, {"kind": "exec", "argv": ["zeros", str(4 * INITIAL_WINDOW)]}))
        frames = _frames(sock, lambda f: f.session == 1 and f.type in (FrameType.ERROR, FrameType.EXIT))
        data = sum(len(decode_data(f.payload)[1]) for f in frames if f.type == FrameType.DATA)
        assert data <= INITIAL_WINDOW, "the router forwards no byte past the credit the client granted"
        assert _error_code(frames[-1]) == "flow_control"
        assert decode_json(frames[-1].payload)["message"].startswith("guest")
        assert r.guest is not None
        _wait(lambda: ("flow_control" in {_error_code(f) for f in r.guest.received_frames if isinstance(f, Frame)}))
        sock.sendall(json_frame(2, FrameType.OPEN, {"kind": "exec", "argv": ["echo", "next"]}))
        frames = _frames(sock, lambda f: f.session == 2 and f.type == FrameType.EXIT)
        assert frames[-1].type == FrameType.EXIT
    finally:
        r.close()
    assert not r.errors, r.errors


def test_a_client_overrunning_the_guest_credit_loses_the_session(tmp_path: Path) -> None:
    r = RouterRig(tmp_path, hold_credit=True)
    try:
        sock = r.raw()
        _hello(sock)
        sock.sendall(json_frame(1, FrameType.OPEN, {"kind": "exec", "argv": ["count-stdin"], "stdin": True}))
        chunk = encode_frame(1, FrameType.DATA, encode_data(0, bytes(MAX_DATA_CHUNK)))
        for _ in range(2 * INITIAL_WINDOW // MAX_DATA_CHUNK):
            sock.sendall(chunk)
        frames = _frames(sock, lambda f: f.session == 1 and f.type == FrameType.ERROR)
        assert _error_code(frames[-1]) == "flow_control"
        assert r.guest is not None and r.guest.errors_sent == [], "the router, not the guest, caught it"
        got = sum(len(f.payload) - 1 for f in r.guest.received_frames
                  if isinstance(f, Frame) and f.type == FrameType.DATA)
        assert got <= INITIAL_WINDOW
    finally:
        r.close()
    assert not r.errors, r.errors


def test_guest_data_on_a_foreign_stream_ends_the_session(rig: RouterRig) -> None:
    assert rig.guest is not None

    def stream7(s: FakeSession) -> None:
        for _ in range(100):
            s.guest.send(encode_frame(s.id, FrameType.DATA, encode_data(7, bytes(MAX_DATA_CHUNK))))

    rig.guest.handlers["stream7"] = stream7
    sock = rig.raw()
    _hello(sock)
    sock.sendall(json_frame(1, FrameType.OPEN, {"kind": "stream7"}))
    frames = _frames(sock, lambda f: f.session == 1 and f.type == FrameType.ERROR)
    assert _error_code(frames[-1]) == "bad_request"
    assert not any(f.type == FrameType.DATA for f in frames)


def test_sessions_per_client_are_bounded(rig: RouterRig) -> None:
    rig.router.max_sessions_per_client = 3
    sock = rig.raw()
    _hello(sock)
    for sid in range(1, 5):
        sock.sendall(json_frame(sid, FrameType.OPEN, {"kind": "exec", "argv": ["sleep", "5"]}))
    frames = _frames(sock, lambda f: f.session == 4 and f.type == FrameType.ERROR)
    assert _error_code(frames[-1]) == "too_many_sessions"


# ------------------------------------------------------------ the token endpoint


@pytest.fixture
def tcp_rig(tmp_path: Path) -> Iterator[RouterRig]:
    r = RouterRig(tmp_path, tcp=True)
    yield r
    r.close()
    assert not r.errors, r.errors


@pytest.mark.parametrize("token", ["é" * 32, "\ud800", 12345, None])
def test_a_bad_token_is_refused_and_the_router_survives(tcp_rig: RouterRig, token: object) -> None:
    sock = tcp_rig.raw()
    body = {"protocol": "microagent-channel", "version": 1, "role": "host"}
    if token is not None:
        body["token"] = token
    sock.sendall(encode_frame(0, FrameType.HELLO, json.dumps(body).encode()))  # ASCII-escaped: a lone surrogate gets through
    frames = _frames(sock, lambda f: False)  # until the router hangs up
    assert [_error_code(f) for f in frames] == ["policy_denied"]
    assert tcp_rig.thread.is_alive(), f"the router died: {tcp_rig.errors}"
    with pytest.raises(PolicyDenied, match="token"):
        ChannelConnection.open(SocketStream(tcp_rig.raw()), hello_timeout=5, hello_fields={"token": "x"})
    with open_channel(tcp_rig.endpoint) as conn:
        assert run(conn, ExecRequest(["echo", "ok"]), timeout=10).stdout == b"ok\n"


def test_an_unauthenticated_client_is_dropped_after_its_first_frame(tcp_rig: RouterRig) -> None:
    sock = tcp_rig.raw()
    sock.sendall(json_frame(1, FrameType.OPEN, {"kind": "exec", "argv": ["x"]}))
    frames = _frames(sock, lambda f: False)  # until the router hangs up
    assert [_error_code(f) for f in frames] == ["no_hello"]
    _wait(lambda: tcp_rig.client_peers() == [])

    flooder = tcp_rig.raw()  # answers would queue for a client that never reads
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for sid in range(1, 100000):
            flooder.sendall(json_frame(sid, FrameType.OPEN, {"kind": "exec", "argv": ["x"]}))
    _wait(lambda: tcp_rig.client_peers() == [])


def test_a_silent_client_is_dropped_after_the_hello_timeout(tcp_rig: RouterRig) -> None:
    tcp_rig.router.hello_timeout_s = 0.5
    sock = tcp_rig.raw()
    t0 = time.monotonic()
    assert sock.recv(100) == b""
    assert time.monotonic() - t0 < 5
    assert tcp_rig.client_peers() == []


def test_the_number_of_clients_is_bounded(tcp_rig: RouterRig) -> None:
    tcp_rig.router.max_clients = 4
    held = [tcp_rig.raw() for _ in range(4)]
    _wait(lambda: len(tcp_rig.client_peers()) == 4)
    extra = tcp_rig.raw()
    assert extra.recv(100) == b"", "a client past the limit is closed at once"
    assert len(tcp_rig.client_peers()) == 4
    for s in held:
        s.close()
