"""Frames of the guest channel protocol (docs/protocol.md, "Frames").

This module owns the byte layout only: the frame types, the 9-byte header,
an incremental decoder and helpers for the DATA, WINDOW and JSON payloads.
It does no I/O and keeps no session state; :mod:`microagent.channel.mux`
does the routing and flow control on top of it.

Errors raised here are :class:`ProtocolError` (a :class:`Permanent`); the
decoder itself never raises on any input, it reports an over-long frame as an
:class:`OversizedFrame` event instead (docs/protocol.md: the receiver skips
the payload and stays in sync).
"""

from __future__ import annotations

import struct
from operator import itemgetter

from microagent import jsonlite
from microagent.channel.errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs CLI start-up time; mypy reads this block
    from typing import Any

__all__ = [
    "HEADER_SIZE",
    "INITIAL_WINDOW",
    "MAX_DATA_CHUNK",
    "MAX_PAYLOAD",
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "STDERR",
    "STDIN",
    "STDOUT",
    "Frame",
    "FrameDecoder",
    "FRAME_TYPE_NAMES",
    "FrameType",
    "OversizedFrame",
    "ProtocolError",
    "decode_data",
    "decode_json",
    "decode_window",
    "encode_data",
    "encode_frame",
    "encode_json",
    "encode_window",
    "frame_type_name",
    "json_frame",
]

PROTOCOL_NAME = "microagent-channel"
"""The ``protocol`` field of ``HELLO``."""

PROTOCOL_VERSION = 1
"""The only protocol version this module speaks."""

HEADER_SIZE = 9
"""Bytes in a frame header: u32 length, u32 session, u8 type."""

MAX_PAYLOAD = 1 << 20
"""Largest legal payload length (1 MiB)."""

MAX_DATA_CHUNK = 32 << 10
"""Largest number of data bytes in one DATA frame (32 KiB)."""

INITIAL_WINDOW = 256 << 10
"""Initial flow-control credit of every stream of every session (256 KiB)."""

STDIN = 0
"""Stream id of stdin / host-to-guest data."""
STDOUT = 1
"""Stream id of stdout / guest-to-host data."""
STDERR = 2
"""Stream id of stderr."""

_HEADER = struct.Struct(">IIB")
_U32 = struct.Struct(">I")
_U32_MAX = 0xFFFFFFFF


# Plain ints, plain tuples: enum and collections.namedtuple would cost the
# channel helper (one per workspace) about 1.5 MiB of memory each.
class FrameType:
    """Frame types (docs/protocol.md, "Frame types"): the type byte's values."""

    HELLO = 1
    OPEN = 2
    DATA = 3
    WINDOW = 4
    CONTROL = 5
    EXIT = 6
    ERROR = 7
    CLOSE = 8


FRAME_TYPE_NAMES = {value: name for name, value in vars(FrameType).items() if name.isupper()}
"""Each known type byte's name, for messages."""


def frame_type_name(type: int) -> str:
    """``"DATA"`` for 3; ``"type 99"`` for a byte no frame type has."""
    return FRAME_TYPE_NAMES.get(type) or f"type {type}"


def _field(index: int, doc: str) -> Any:
    """A read-only attribute for one item of a tuple subclass, read in C (as namedtuple's are)."""
    return property(itemgetter(index), doc=doc)


class Frame(tuple):  # type: ignore[type-arg]
    """One decoded frame: the tuple ``(session, type, payload)``."""

    __slots__ = ()
    session: int = _field(0, "session id (0 = the connection itself)")
    type: int = _field(1, "the raw type byte; compare with FrameType's values, or use known_type, "
                          "since unknown types are kept as they came")
    payload: bytes = _field(2, "the payload bytes (at most MAX_PAYLOAD)")

    def __new__(cls, session: int, type: int, payload: bytes = b"") -> Frame:
        return tuple.__new__(cls, (session, type, payload))

    @property
    def known_type(self) -> int | None:
        """The type byte when it is one of :class:`FrameType`'s, else ``None``."""
        return self[1] if self[1] in FRAME_TYPE_NAMES else None

    def __repr__(self) -> str:
        return f"Frame(session={self[0]!r}, type={self[1]!r}, payload={self[2]!r})"


class OversizedFrame(tuple):  # type: ignore[type-arg]
    """A header whose length exceeds :data:`MAX_PAYLOAD`: the tuple ``(session, type, length)``.

    The decoder skips exactly ``length`` payload bytes after reporting it;
    the receiver answers ``ERROR {code:"frame_too_large"}`` on ``session``.
    """

    __slots__ = ()
    session: int = _field(0, "session id")
    type: int = _field(1, "the raw type byte")
    length: int = _field(2, "the payload length the header announced")

    def __new__(cls, session: int, type: int, length: int) -> OversizedFrame:
        return tuple.__new__(cls, (session, type, length))

    def __repr__(self) -> str:
        return f"OversizedFrame(session={self[0]!r}, type={self[1]!r}, length={self[2]!r})"


def encode_frame(session: int, type: int, payload: bytes = b"") -> bytes:
    """Encode one frame (header plus payload).

    :param session: session id, ``0 <= session < 2**32``.
    :param type: frame type byte (a :class:`FrameType` or any ``0..255``).
    :param payload: at most :data:`MAX_PAYLOAD` bytes.
    :raises ProtocolError: when a field is out of range or the payload is too large.
    """
    if not 0 <= session <= _U32_MAX:
        raise ProtocolError(f"session id {session} out of range")
    if not 0 <= int(type) <= 255:
        raise ProtocolError(f"frame type {type} out of range")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(len(payload), session, int(type)) + bytes(payload)


class FrameDecoder:
    """Incremental frame decoder: feed arbitrary chunks, get whole frames.

    ``feed`` never raises: every 9-byte header is well formed by
    construction, and lengths above :data:`MAX_PAYLOAD` yield an
    :class:`OversizedFrame` event after which the payload is skipped.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    @property
    def skipping(self) -> int:
        """Payload bytes of an oversized frame still to be skipped."""
        return self._skip

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        """Add bytes and return every event they complete, in order."""
        events: list[Frame | OversizedFrame] = []
        view = memoryview(data)
        if self._skip:
            n = min(self._skip, len(view))
            self._skip -= n
            view = view[n:]
        self._buf += view
        buf = self._buf
        pos = 0
        while True:
            if len(buf) - pos < HEADER_SIZE:
                break
            length, session, ftype = _HEADER.unpack_from(buf, pos)
            if length > MAX_PAYLOAD:
                pos += HEADER_SIZE
                avail = len(buf) - pos
                n = min(avail, length)
                pos += n
                self._skip = length - n
                events.append(OversizedFrame(session, ftype, length))
                continue
            end = pos + HEADER_SIZE + length
            if len(buf) < end:
                break
            events.append(Frame(session, ftype, bytes(buf[pos + HEADER_SIZE : end])))
            pos = end
        if pos:
            del buf[:pos]
        return events


def encode_data(stream: int, data: bytes = b"") -> bytes:
    """DATA payload: one stream-id byte then the bytes (empty = EOF).

    :raises ProtocolError: if ``stream`` is not a byte or ``data`` exceeds
        :data:`MAX_DATA_CHUNK`.
    """
    if not 0 <= stream <= 255:
        raise ProtocolError(f"stream id {stream} out of range")
    if len(data) > MAX_DATA_CHUNK:
        raise ProtocolError(f"DATA chunk of {len(data)} bytes exceeds {MAX_DATA_CHUNK}")
    return bytes((stream,)) + bytes(data)


def decode_data(payload: bytes) -> tuple[int, bytes]:
    """Split a DATA payload into ``(stream, data)``; empty data is EOF.

    :raises ProtocolError: if the payload is empty or the data exceeds
        :data:`MAX_DATA_CHUNK`.
    """
    if not payload:
        raise ProtocolError("DATA frame without a stream id")
    if len(payload) - 1 > MAX_DATA_CHUNK:
        raise ProtocolError(f"DATA chunk of {len(payload) - 1} bytes exceeds {MAX_DATA_CHUNK}")
    return payload[0], bytes(payload[1:])


def encode_window(stream: int, increment: int) -> bytes:
    """WINDOW payload: stream-id byte then a u32 big-endian credit increment.

    :raises ProtocolError: if a field is out of range.
    """
    if not 0 <= stream <= 255:
        raise ProtocolError(f"stream id {stream} out of range")
    if not 0 <= increment <= _U32_MAX:
        raise ProtocolError(f"window increment {increment} out of range")
    return bytes((stream,)) + _U32.pack(increment)


def decode_window(payload: bytes) -> tuple[int, int]:
    """Split a WINDOW payload into ``(stream, increment)``.

    :raises ProtocolError: unless the payload is exactly 5 bytes.
    """
    if len(payload) != 5:
        raise ProtocolError(f"WINDOW payload of {len(payload)} bytes, expected 5")
    return payload[0], _U32.unpack_from(payload, 1)[0]


def encode_json(obj: dict[str, Any]) -> bytes:
    """A compact UTF-8 JSON payload.

    :raises ProtocolError: if ``obj`` cannot be serialised or is too large.
    """
    try:
        out = jsonlite.dumps(obj).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"payload is not JSON-serialisable: {exc}") from exc
    if len(out) > MAX_PAYLOAD:
        raise ProtocolError(f"JSON payload of {len(out)} bytes exceeds {MAX_PAYLOAD}")
    return out


def decode_json(payload: bytes) -> dict[str, Any]:
    """Parse a JSON payload, which must be a UTF-8 JSON object.

    :raises ProtocolError: if it is not UTF-8, not JSON, or not an object.
    """
    try:
        obj = jsonlite.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"JSON payload is a {type(obj).__name__}, expected an object")
    return obj


def json_frame(session: int, type: int, obj: dict[str, Any]) -> bytes:
    """Encode a frame whose payload is ``obj`` as JSON.

    :raises ProtocolError: as :func:`encode_json` and :func:`encode_frame`.
    """
    return encode_frame(session, type, encode_json(obj))
