"""Property-based fuzzing of the host side of the channel (hypothesis).

Random bytes and mutated real frames go into the frame decoder, the client
connection's dispatcher (what its reader thread runs) and the channel
helper's routing, from either side. Whatever arrives, nothing may raise,
hang or keep more than the protocol's bounds; a broken frame costs at most
its own session. Settings are derandomized and small so CI runs in seconds.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microagent.channel import ChannelConnection, SocketStream
from microagent.channel.frames import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    encode_data,
    encode_frame,
    encode_window,
    json_frame,
)
from microagent.channel.limits import MAX_QUEUED_CONTROL_BYTES
from microagent.channel.mux import ControlEvent, DataEvent
from microagent.channel.router import Peer, Route, Router

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SESSIONS = (0, 1, 2, 3, 99)


def _real_frames(sid: int) -> list[bytes]:
    """Frames a real peer sends on session ``sid`` (both directions)."""
    return [
        json_frame(sid, FrameType.HELLO, {"protocol": "microagent-channel", "version": 1, "role": "guest"}),
        json_frame(sid, FrameType.OPEN, {"kind": "exec", "argv": ["sh", "-c", "echo hi"]}),
        encode_frame(sid, FrameType.DATA, encode_data(1, b"hello\n")),
        encode_frame(sid, FrameType.DATA, encode_data(2, b"err")),
        encode_frame(sid, FrameType.DATA, encode_data(0, b"in")),
        encode_frame(sid, FrameType.DATA, encode_data(1)),
        encode_frame(sid, FrameType.WINDOW, encode_window(1, 4096)),
        encode_frame(sid, FrameType.WINDOW, encode_window(0, 131072)),
        json_frame(sid, FrameType.CONTROL, {"started": {"pid": 7}}),
        json_frame(sid, FrameType.CONTROL, {"stat": {"size": 3, "mode": 0o644, "uid": 0, "gid": 0}}),
        json_frame(sid, FrameType.EXIT, {"status": "exited", "exit_code": 0}),
        json_frame(sid, FrameType.ERROR, {"code": "not_found", "message": "x"}),
        encode_frame(sid, FrameType.CLOSE),
        struct.pack(">IIB", MAX_PAYLOAD + 5, sid, 3) + bytes(64),  # oversized header, partial body
    ]


@st.composite
def mutated_frame(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(_real_frames(draw(st.sampled_from(SESSIONS))))))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "type", "length", "junk"]))
        if op == "flip" and frame:
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del frame[draw(st.integers(0, len(frame))):]
        elif op == "type" and len(frame) >= HEADER_SIZE:
            frame[8] = draw(st.integers(0, 255))
        elif op == "length" and len(frame) >= 4:
            frame[0:4] = struct.pack(">I", draw(st.sampled_from([0, 1, 5, MAX_PAYLOAD, MAX_PAYLOAD + 1, 2**32 - 1])))
        elif op == "junk":
            frame += draw(st.binary(max_size=64))
    return bytes(frame)


streams = st.lists(st.one_of(mutated_frame(), st.binary(max_size=200)), max_size=25).map(b"".join)


# ------------------------------------------------------------------ decoder


@FUZZ
@given(data=streams, cuts=st.lists(st.integers(1, 4096), min_size=1, max_size=8))
def test_decoder_never_raises_and_buffers_at_most_one_frame(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder()
    pos, i = 0, 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        for ev in dec.feed(data[pos:pos + n]):
            assert isinstance(ev, (Frame, OversizedFrame))
            if isinstance(ev, Frame):
                assert len(ev.payload) <= MAX_PAYLOAD
        pos += n
        i += 1
        assert dec.buffered < HEADER_SIZE + MAX_PAYLOAD


@FUZZ
@given(frames=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255), st.binary(max_size=300)),
                       max_size=20),
       cuts=st.lists(st.integers(1, 50), min_size=1, max_size=5))
def test_decoder_round_trips_any_split(frames: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    data = b"".join(encode_frame(*f) for f in frames)
    dec = FrameDecoder()
    out: list[Frame | OversizedFrame] = []
    pos, i = 0, 0
    while pos < len(data):
        out += dec.feed(data[pos:pos + cuts[i % len(cuts)]])
        pos += cuts[i % len(cuts)]
        i += 1
    assert out == [Frame(*f) for f in frames] and dec.buffered == 0


# ------------------------------------------------------------------ client connection


@contextmanager
def _drained_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A socketpair whose second end is read (and discarded) by a thread."""
    a, b = socket.socketpair()

    def drain() -> None:
        try:
            while b.recv(1 << 16):
                pass
        except OSError:
            pass

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        yield a, b
    finally:
        a.close()
        t.join(5)
        b.close()


@FUZZ
@given(data=streams)
def test_client_connection_survives_any_guest_bytes(data: bytes) -> None:
    with _drained_pair() as (host, _):
        conn = ChannelConnection(SocketStream(host), name="fuzz")
        sessions = [conn.open_session("exec", argv=["x"]) for _ in range(3)]  # ids 1, 2, 3
        for ev in FrameDecoder().feed(data):  # exactly what the reader thread does with them
            if isinstance(ev, OversizedFrame):
                conn._on_oversized(ev)  # noqa: SLF001
            else:
                conn._dispatch(ev)  # noqa: SLF001
        for s in sessions:
            queued = list(s._events)  # noqa: SLF001
            for stream in (1, 2):
                assert sum(len(e.data) for e in queued if isinstance(e, DataEvent) and e.stream == stream) \
                    <= INITIAL_WINDOW
            assert sum(e.size for e in queued if isinstance(e, ControlEvent)) <= MAX_QUEUED_CONTROL_BYTES
            assert all(isinstance(e, (DataEvent, ControlEvent)) or e is queued[-1] for e in queued), \
                "nothing follows the final EXIT/ERROR"
        conn.close()


# ------------------------------------------------------------------ router


@contextmanager
def _router() -> Iterator[tuple[Router, list[Peer]]]:
    with _drained_pair() as (guest, _), _drained_pair() as (c1, _c1), _drained_pair() as (c2, _c2):
        listener = socket.socket(socket.AF_UNIX)
        router = Router(guest, listener)
        clients = []
        for sock in (c1, c2):
            sock.setblocking(False)
            peer = Peer(sock, hello_done=True)
            router.clients[sock.fileno()] = peer
            clients.append(peer)
        for client in clients:  # each client has sessions 1 and 2 open
            for sid in (1, 2):
                gsid = router.next_sid
                router.next_sid += 1
                client.sessions[sid] = gsid
                router.routes[gsid] = Route(client, sid)
        try:
            yield router, clients
        finally:
            router.clients.clear()
            listener.close()


def _check_router(router: Router, clients: list[Peer]) -> None:
    for gsid, route in router.routes.items():
        assert route.client.sessions.get(route.client_sid) == gsid
        assert all(credit >= 0 for credit in route.to_client.values()) and route.to_guest >= 0
    for client in clients:
        for sid, gsid in client.sessions.items():
            assert router.routes[gsid].client is client


@FUZZ
@given(data=streams)
def test_router_survives_any_guest_bytes(data: bytes) -> None:
    with _router() as (router, clients):
        for ev in FrameDecoder().feed(data):
            router._from_guest(ev)  # noqa: SLF001
        _check_router(router, clients)


@FUZZ
@given(data=streams, which=st.integers(0, 1))
def test_router_survives_any_client_bytes(data: bytes, which: int) -> None:
    with _router() as (router, clients):
        peer = clients[which]
        for ev in FrameDecoder().feed(data):
            if peer.sock.fileno() not in router.clients:
                break  # the router hung up on it
            router._from_client(peer, ev)  # noqa: SLF001
        _check_router(router, [c for c in clients if c.sock.fileno() in router.clients])
