"""Unit tests for microagent.channel.frames (docs/protocol.md, "Frames")."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microagent.channel.errors import ProtocolError
from microagent.channel.frames import (
    FRAME_TYPE_NAMES,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_DATA_CHUNK,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    decode_data,
    decode_json,
    decode_window,
    encode_data,
    encode_frame,
    encode_json,
    encode_window,
    frame_type_name,
)
from microagent.errors import Permanent

frames_st = st.builds(
    Frame,
    session=st.integers(0, 2**32 - 1),
    type=st.integers(0, 255),
    payload=st.binary(max_size=2048),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def test_constants_match_spec() -> None:
    assert MAX_PAYLOAD == 1048576
    assert MAX_DATA_CHUNK == 32 * 1024
    assert INITIAL_WINDOW == 262144
    assert HEADER_SIZE == 9
    assert [getattr(FrameType, name) for name in FRAME_TYPE_NAMES.values()] == list(FRAME_TYPE_NAMES) == list(range(1, 9))
    assert (frame_type_name(3), frame_type_name(99)) == ("DATA", "type 99")


def test_header_layout() -> None:
    raw = encode_frame(7, FrameType.CONTROL, b"{}")
    assert raw == struct.pack(">IIB", 2, 7, 5) + b"{}"


@given(st.lists(frames_st, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
def test_roundtrip_any_chunking(frames: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f.session, f.type, f.payload) for f in frames)
    dec = FrameDecoder()
    out = []
    for chunk in _chunks(wire, cuts):
        out.extend(dec.feed(chunk))
    assert out == frames
    assert dec.buffered == 0


@given(st.lists(frames_st, max_size=5))
def test_roundtrip_byte_by_byte(frames: list[Frame]) -> None:
    wire = b"".join(encode_frame(f.session, f.type, f.payload) for f in frames)
    dec = FrameDecoder()
    out = []
    for i in range(len(wire)):
        out.extend(dec.feed(wire[i : i + 1]))
    assert out == frames


@settings(max_examples=50)
@given(
    st.integers(MAX_PAYLOAD + 1, MAX_PAYLOAD + 70000),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.lists(st.integers(0, 10**7), max_size=10),
)
def test_oversized_is_reported_and_skipped(length: int, session: int, ftype: int, cuts: list[int]) -> None:
    after = encode_frame(3, FrameType.EXIT, b'{"status":"ok"}')
    wire = struct.pack(">IIB", length, session, ftype) + bytes(length) + after
    dec = FrameDecoder()
    out = []
    for chunk in _chunks(wire, cuts):
        out.extend(dec.feed(chunk))
    assert out == [OversizedFrame(session, ftype, length), Frame(3, FrameType.EXIT, b'{"status":"ok"}')]
    assert dec.skipping == 0 and dec.buffered == 0


def test_oversized_max_u32_header_is_skipping() -> None:
    dec = FrameDecoder()
    assert dec.feed(struct.pack(">IIB", 2**32 - 1, 1, 3)) == [OversizedFrame(1, 3, 2**32 - 1)]
    assert dec.skipping == 2**32 - 1
    dec.feed(bytes(1000))
    assert dec.skipping == 2**32 - 1 - 1000


def test_exactly_max_payload_is_a_frame() -> None:
    payload = bytes(MAX_PAYLOAD)
    dec = FrameDecoder()
    assert dec.feed(encode_frame(1, FrameType.DATA, payload)) == [Frame(1, FrameType.DATA, payload)]


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ProtocolError):
        encode_frame(1, FrameType.DATA, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ProtocolError):
        encode_frame(2**32, FrameType.DATA)
    with pytest.raises(ProtocolError):
        encode_frame(1, 256)
    with pytest.raises(ProtocolError):
        encode_data(1, bytes(MAX_DATA_CHUNK + 1))


@given(st.binary(max_size=4096), st.lists(st.integers(0, 5000), max_size=20))
def test_garbage_never_raises(garbage: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder()
    for chunk in _chunks(garbage, cuts):
        for ev in dec.feed(chunk):
            assert isinstance(ev, (Frame, OversizedFrame))
            if isinstance(ev, Frame):
                assert len(ev.payload) <= MAX_PAYLOAD
                # payload helpers raise only the documented error type
                for helper in (decode_data, decode_window, decode_json):
                    try:
                        helper(ev.payload)
                    except ProtocolError:
                        pass


@given(st.binary(max_size=600))
def test_payload_helpers_raise_only_protocol_error(payload: bytes) -> None:
    for helper in (decode_data, decode_window, decode_json):
        try:
            helper(payload)
        except ProtocolError as exc:
            assert isinstance(exc, Permanent)


@given(st.integers(0, 255), st.binary(max_size=MAX_DATA_CHUNK))
def test_data_roundtrip(stream: int, data: bytes) -> None:
    assert decode_data(encode_data(stream, data)) == (stream, data)


@given(st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_window_roundtrip(stream: int, inc: int) -> None:
    assert decode_window(encode_window(stream, inc)) == (stream, inc)


@given(
    st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
            max_leaves=10,
        ),
        max_size=6,
    )
)
def test_json_roundtrip(obj: dict) -> None:
    assert decode_json(encode_json(obj)) == obj


def test_json_rejects_non_objects() -> None:
    for bad in (b"[]", b"1", b"\xff", b"{", b'"x"', b"[" * 100000):
        with pytest.raises(ProtocolError):
            decode_json(bad)


def test_unknown_type_kept() -> None:
    (f,) = FrameDecoder().feed(encode_frame(5, 99, b"x"))
    assert f.type == 99 and f.known_type is None
