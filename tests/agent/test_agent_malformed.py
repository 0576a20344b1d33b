"""Malformed input to the real guest: it must answer errors, never die.

The guest runs with ``--listen`` so that each example gets a fresh host
connection; after the garbage the same connection (if it stayed in frame
sync) or a new one must still complete HELLO and an exec.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microagent.channel import ChannelConnection, ExecRequest, SocketStream, connect_unix
from microagent.channel.exec import run
from microagent.channel.frames import MAX_PAYLOAD, FrameType, encode_frame


class ListenAgent:
    def __init__(self, binary: Path, path: Path, log: Path) -> None:
        self.path = path
        self._log = open(log, "wb")  # noqa: SIM115
        self.log_path = log
        self.proc = subprocess.Popen(
            [str(binary), "--agent", "--listen", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        end = time.monotonic() + 5
        while not path.exists():
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < end, "agent --listen did not create its socket"
            time.sleep(0.01)

    def raw(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(str(self.path))
        return s

    def check_healthy(self, sock: socket.socket | None = None) -> None:
        assert self.proc.poll() is None, f"agent died (rc={self.proc.returncode}):\n{self.log_path.read_text()}"
        stream = SocketStream(sock) if sock is not None else connect_unix(self.path, timeout=5)
        conn = ChannelConnection.open(stream, name="listen-agent", hello_timeout=5)
        try:
            assert run(conn, ExecRequest(["echo", "alive"]), timeout=5).stdout == b"alive\n"
        finally:
            conn.close()


@pytest.fixture(scope="module")
def listen_agent(agent_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenAgent]:
    d = tmp_path_factory.mktemp("listen")
    a = ListenAgent(agent_binary, d / "agent.sock", d / "agent.log")
    yield a
    a.proc.kill()
    a.proc.wait(5)
    a._log.close()


# Field values that can never name a real program or a writable path:
# argv/path values are numbers or lists of numbers, so OPEN payloads parse
# but fail validation (or are plain garbage).
_value = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=6) | st.lists(st.integers(), max_size=3)
_json_payload = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["exec", "get", "forward", "bogus", ""]) | st.integers(),
        "argv": st.integers() | st.lists(st.integers(), max_size=3) | st.just([]),
        "path": st.integers() | st.just("relative") | st.just(""),
        "port": st.none() | st.text(max_size=4) | st.integers(-5, 0) | st.integers(70_000, 2**40),
        "host": st.just("127.0.0.1") | st.integers(),
        "env": _value,
        "rows": _value,
        "cols": _value,
        "stdin": _value,
        "pty": _value,
        "timeout_ms": _value,
        "code": _value,
        "version": _value,
        "resize": st.dictionaries(st.sampled_from(["rows", "cols"]), _value),
        "signal": st.integers(-5, 70),
    },
).map(lambda d: json.dumps(d).encode())
_payload = _json_payload | st.binary(max_size=300) | st.just(b"") | st.just(b"{") | st.just(b"\x00\x00\x00\x00\x00")
_sessions = st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1)
_types = st.sampled_from(list(range(1, 9))) | st.integers(0, 255)


@st.composite
def _frame(draw: st.DrawFn) -> bytes:
    session = draw(_sessions)
    ftype = draw(_types)
    if session == 0 and ftype == FrameType.HELLO:
        ftype = FrameType.CONTROL  # a HELLO would reset the connection: not garbage
    if draw(st.integers(0, 30)) == 0:
        n = draw(st.integers(MAX_PAYLOAD + 1, MAX_PAYLOAD + 50_000))
        return struct.pack(">IIB", n, session, ftype) + bytes(n)
    return encode_frame(session, ftype, draw(_payload))


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while sock.recv(1 << 16):
            pass
    except (BlockingIOError, OSError):
        pass
    sock.setblocking(True)


def _settle(sock: socket.socket, quiet_s: float = 0.2) -> None:
    """Read until the guest has been silent for ``quiet_s``: a reply to a garbage frame
    that arrived late would otherwise be read as a reply on the health check's session."""
    sock.settimeout(quiet_s)
    try:
        while sock.recv(1 << 16):
            pass
    except (TimeoutError, OSError):
        pass
    sock.settimeout(5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frames=st.lists(_frame(), min_size=1, max_size=25), hello_first=st.booleans())
def test_garbage_frames_then_hello_on_same_connection(listen_agent: ListenAgent, frames: list[bytes], hello_first: bool) -> None:
    sock = listen_agent.raw()
    if hello_first:
        sock.sendall(encode_frame(0, FrameType.HELLO, b'{"protocol":"microagent-channel","version":1,"role":"host"}'))
    for f in frames:
        sock.sendall(f)
        _drain(sock)  # keep the guest's replies from filling the socket
    _settle(sock)
    listen_agent.check_healthy(sock)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=4096))
def test_random_bytes_then_new_connection(listen_agent: ListenAgent, garbage: bytes) -> None:
    sock = listen_agent.raw()
    try:
        sock.sendall(garbage)
        _drain(sock)
    except OSError:
        pass
    sock.close()
    listen_agent.check_healthy()


def test_specific_error_codes(listen_agent: ListenAgent) -> None:
    """The documented ERROR codes for the documented malformations."""
    from microagent.channel.frames import FrameDecoder, decode_json, json_frame

    sock = listen_agent.raw()
    dec = FrameDecoder()

    def expect(session: int) -> dict:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            for ev in dec.feed(sock.recv(65536)):
                if getattr(ev, "session", None) == session and getattr(ev, "type", None) == FrameType.ERROR:
                    return decode_json(ev.payload)
        raise AssertionError(f"no ERROR on session {session}")

    sock.sendall(json_frame(5, FrameType.OPEN, {"kind": "exec", "argv": ["true"]}))
    assert expect(5)["code"] == "no_hello"
    sock.sendall(json_frame(0, FrameType.HELLO, {"protocol": "microagent-channel", "version": 2, "role": "host"}))
    assert expect(0)["code"] == "version_mismatch"
    sock.sendall(json_frame(0, FrameType.HELLO, {"protocol": "microagent-channel", "version": 1, "role": "host"}))
    sock.sendall(encode_frame(6, FrameType.OPEN, b"{not json"))
    assert expect(6)["code"] == "bad_request"
    sock.sendall(json_frame(7, FrameType.OPEN, {"kind": "exec"}))
    assert expect(7)["code"] == "bad_request"
    sock.sendall(json_frame(8, FrameType.OPEN, {"kind": "exec", "argv": []}))
    assert expect(8)["code"] == "bad_request"
    sock.sendall(encode_frame(9, 200, b""))
    assert expect(9)["code"] == "unknown_frame"
    sock.sendall(struct.pack(">IIB", MAX_PAYLOAD + 1, 10, FrameType.OPEN) + bytes(MAX_PAYLOAD + 1))
    assert expect(10)["code"] == "frame_too_large"
    sock.sendall(json_frame(11, FrameType.OPEN, {"kind": "exec", "argv": ["sleep", "5"]}))
    sock.sendall(json_frame(11, FrameType.OPEN, {"kind": "exec", "argv": ["sleep", "5"]}))
    assert expect(11)["code"] == "session_exists"
    sock.close()
    listen_agent.check_healthy()
