"""A hostile guest against the host channel client (channel/mux, exec, files).

The guest is :class:`FakeGuest` with handlers that break the protocol on
purpose: DATA past the credit or on a stream it does not own, floods of
CONTROL or EOF frames, more output than asked for, files with setuid bits,
silence. Each must end only the session concerned, with a clear error, and
keep host memory bounded.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit.channel.fake_guest import FakeGuest, FakeSession, fake_pair

from microagent.channel import ChannelConnection, ChannelTimeout, ExecRequest, ProtocolError, SocketStream
from microagent.channel.exec import run, start
from microagent.channel.files import get, get_bytes, put
from microagent.channel.frames import MAX_DATA_CHUNK, FrameType, encode_data, encode_frame, json_frame
from microagent.errors import ResourceExhausted


@pytest.fixture
def pair() -> Iterator[tuple[ChannelConnection, FakeGuest]]:
    host, guest = fake_pair()
    conn = ChannelConnection.open(SocketStream(host), name="fake", hello_timeout=2)
    yield conn, guest
    conn.close()
    guest.vanish()


def _evil(guest: FakeGuest, name: str, fn) -> None:  # type: ignore[no-untyped-def]
    guest.handlers[name] = fn


def _raw(s: FakeSession, ftype: FrameType, payload: bytes) -> None:
    s.guest.send(encode_frame(s.id, ftype, payload))


# ------------------------------------------------------------ cp modes


@pytest.mark.parametrize("guest_mode", [0o4755, 0o6777, 0o1777, 0o2750])
def test_get_drops_setuid_setgid_sticky_and_applies_umask(
        pair: tuple[ChannelConnection, FakeGuest], tmp_path: Path, guest_mode: int) -> None:
    conn, guest = pair
    guest.files["/bin/evil"] = (b"\x7fELF", guest_mode)
    old = os.umask(0o027)
    try:
        st = get(conn, "/bin/evil", tmp_path / "evil")
    finally:
        os.umask(old)
    assert st.permissions == guest_mode  # what the guest reported is kept in the stat
    assert (tmp_path / "evil").stat().st_mode & 0o7777 == guest_mode & 0o777 & ~0o027


def test_get_replaces_a_symlink_at_the_destination(pair: tuple[ChannelConnection, FakeGuest], tmp_path: Path) -> None:
    conn, guest = pair
    guest.files["/f"] = (b"from guest", 0o644)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    link = tmp_path / "dest"
    link.symlink_to(victim)
    get(conn, "/f", link)
    assert victim.read_bytes() == b"keep me"
    assert not link.is_symlink() and link.read_bytes() == b"from guest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "victim"]


# ------------------------------------------------------------ flow control


def test_data_on_a_stream_the_guest_does_not_own_ends_the_session(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair

    def flood(s: FakeSession) -> None:
        chunk = encode_data(7, bytes(MAX_DATA_CHUNK))
        for _ in range(2048):  # 64 MiB if it were all queued
            if s.closed:
                return
            _raw(s, FrameType.DATA, chunk)

    _evil(guest, "flood", flood)
    session = conn.open_session("flood")
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="stream 7"):
            session.wait_final(10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert run(conn, ExecRequest(["echo", "still", "fine"])).stdout == b"still fine\n"


def test_control_flood_is_bounded(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair

    def flood(s: FakeSession) -> None:
        body = json_frame(s.id, FrameType.CONTROL, {"x": "y" * 60000})
        for _ in range(1100):  # 64 MiB of CONTROL nobody consumes
            if s.closed:
                return
            s.guest.send(body)

    _evil(guest, "flood", flood)
    session = conn.open_session("flood")
    deadline = time.monotonic() + 10
    while session._events and not session.ended and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.05)
    time.sleep(0.5)
    assert session.ended, "an unconsumed CONTROL flood must end the session"
    assert len(session._events) <= 65  # noqa: SLF001
    with pytest.raises(ProtocolError, match="CONTROL"):
        session.wait_final(5)


def test_repeated_eof_is_a_protocol_error(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair

    def eofs(s: FakeSession) -> None:
        for _ in range(100000):
            if s.closed:
                return
            _raw(s, FrameType.DATA, encode_data(1))

    _evil(guest, "eofs", eofs)
    session = conn.open_session("eofs")
    time.sleep(0.5)
    assert len(session._events) <= 3  # noqa: SLF001
    with pytest.raises(ProtocolError, match="after its end"):
        session.wait_final(5)


# ------------------------------------------------------------ output bounds


def _ignore_limit(s: FakeSession) -> None:
    """An exec that sends 8 MiB of stdout whatever stdout_limit says, and says nothing was cut."""
    s.control({"started": {"pid": 1}})
    s.send_data(1, bytes(8 << 20))
    s.send_eof(1)
    s.send_eof(2)
    s.exit(FakeGuest._exited(0))  # noqa: SLF001


def test_stdout_limit_is_enforced_on_the_host(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair
    guest.handlers["exec"] = _ignore_limit
    r = run(conn, ExecRequest(["anything"], stdout_limit=1024, stderr_limit=10), timeout=30)
    assert len(r.stdout) == 1024 and r.stdout_truncated
    assert not r.stderr_truncated


def test_stdout_limit_applies_to_a_sink_too(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair
    guest.handlers["exec"] = _ignore_limit
    seen = bytearray()
    r = start(conn, ExecRequest(["anything"], stdout_limit=5000), stdout=seen.extend).wait(30)
    assert len(seen) == 5000 and r.stdout_truncated


def test_default_output_limit_is_16_mib() -> None:
    from microagent.channel.limits import DEFAULT_OUTPUT_LIMIT

    assert DEFAULT_OUTPUT_LIMIT == 16 << 20


def test_get_bytes_is_bounded(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair
    guest.files["/big"] = (bytes(3 << 20), 0o644)
    with pytest.raises(ResourceExhausted, match="max_bytes"):
        get_bytes(conn, "/big", max_bytes=1 << 20)
    assert get_bytes(conn, "/big", max_bytes=4 << 20) == bytes(3 << 20)

    def lying_stat(s: FakeSession) -> None:  # announces 1 byte, then streams megabytes
        s.control({"stat": {"size": 1, "mode": 0o644, "uid": 0, "gid": 0}})
        s.send_data(1, bytes(3 << 20))
        s.send_eof(1)
        s.exit({"status": "ok", "bytes": 3 << 20})

    guest.handlers["get"] = lying_stat
    with pytest.raises(ResourceExhausted):
        get_bytes(conn, "/liar", max_bytes=1 << 20)
    assert conn.session_count() == 0


# ------------------------------------------------------------ silent guests


def _silent(s: FakeSession) -> None:
    while not s.closed:
        time.sleep(0.02)


def test_get_and_put_have_an_idle_timeout(pair: tuple[ChannelConnection, FakeGuest], tmp_path: Path) -> None:
    conn, guest = pair
    guest.handlers["get"] = _silent
    guest.handlers["put"] = _silent
    t0 = time.monotonic()
    with pytest.raises(ChannelTimeout, match="no progress"):
        get(conn, "/x", tmp_path / "x", idle_timeout=0.5)
    with pytest.raises(ChannelTimeout, match="no progress"):
        put(conn, "/x", b"data", idle_timeout=0.5)
    with pytest.raises(ChannelTimeout, match="no progress"):
        put(conn, "/x", bytes(1 << 20), idle_timeout=0.5)  # waits for credit that never comes
    assert time.monotonic() - t0 < 5
    assert list(tmp_path.iterdir()) == []
    assert conn.session_count() == 0


def test_exec_that_never_starts_times_out(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair
    guest.handlers["exec"] = _silent
    t0 = time.monotonic()
    with pytest.raises(ChannelTimeout, match="did not start"):
        start(conn, ExecRequest(["x"]), start_timeout=0.5).wait()
    assert time.monotonic() - t0 < 5


def test_exec_with_a_guest_timeout_that_the_guest_ignores(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair

    def started_then_silent(s: FakeSession) -> None:
        s.control({"started": {"pid": 1}})
        _silent(s)

    guest.handlers["exec"] = started_then_silent
    handle = start(conn, ExecRequest(["sleep", "1000"], timeout_s=0.2), exit_grace=0.5)
    t0 = time.monotonic()
    with pytest.raises(ChannelTimeout, match="did not report"):
        handle.wait()
    assert time.monotonic() - t0 < 5


def test_a_write_to_a_peer_that_stopped_reading_gives_up() -> None:
    import socket

    from microagent.errors import ChannelClosed

    a, b = socket.socketpair()
    stream = SocketStream(a, write_stall_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(ChannelClosed, match="no progress"):
        for _ in range(10000):
            stream.write(bytes(1 << 16))
    assert time.monotonic() - t0 < 5
    stream.close()
    b.close()


def test_other_sessions_survive_a_misbehaving_one(pair: tuple[ChannelConnection, FakeGuest]) -> None:
    conn, guest = pair
    guest.handlers["bad"] = lambda s: _raw(s, FrameType.DATA, encode_data(9, b"x"))
    results: list[bytes] = []
    t = threading.Thread(target=lambda: results.append(run(conn, ExecRequest(["echo", "ok"])).stdout))
    t.start()
    with pytest.raises(ProtocolError):
        conn.open_session("bad").wait_final(5)
    t.join(5)
    assert results == [b"ok\n"]
