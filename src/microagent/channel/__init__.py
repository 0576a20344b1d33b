"""The host side of the guest channel (docs/protocol.md).

The protocol core, one layer per module: :mod:`.frames` (bytes to frames,
no I/O), :mod:`.stream` (transports), :mod:`.mux` (handshake, sessions,
flow control); exceptions in :mod:`.errors`, bounds in :mod:`.limits`. The
core knows nothing of what runs in a session. Above it, one client module
per session kind, each taking a connection: :mod:`.exec` (``run``,
``start``), :mod:`.shell`, :mod:`.files` (``put``, ``get``, ``get_bytes``),
:mod:`.forward`, plus :mod:`.connect` (transport and handshake in one call).
On top sits the per-workspace helper process :mod:`.router`. The layering
is checked by import-linter (pyproject.toml) and described in
docs/architecture.md.

The names below are loaded on first use, so that a client importing one
name (``microagent exec`` takes ``ExecRequest``) does not pay for every
session kind.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs CLI start-up time; mypy reads this block
    from typing import Any

    from microagent.channel.connect import open_channel
    from microagent.channel.errors import (
        ChannelTimeout,
        GuestConnectFailed,
        GuestError,
        GuestNotFound,
        GuestPermissionDenied,
        ProtocolError,
        SessionEnded,
        VersionMismatch,
        guest_error,
    )
    from microagent.channel.exec import ExecRequest, ExecResult, ExecSession, OutputSink
    from microagent.channel.files import FileStat
    from microagent.channel.forward import (
        ForwardStream,
        PortPublisher,
        open_forward,
        splice,
    )
    from microagent.channel.frames import (
        INITIAL_WINDOW,
        MAX_DATA_CHUNK,
        MAX_PAYLOAD,
        PROTOCOL_VERSION,
        Frame,
        FrameDecoder,
        FrameType,
        OversizedFrame,
        encode_frame,
    )
    from microagent.channel.mux import (
        ChannelConnection,
        ControlEvent,
        DataEvent,
        ErrorEvent,
        ExitEvent,
        Session,
        SessionEvent,
        SessionState,
    )
    from microagent.channel.shell import open_shell
    from microagent.channel.stream import (
        ByteStream,
        FdStream,
        SocketStream,
        connect_firecracker_vsock,
        connect_unix,
    )
    from microagent.errors import ChannelClosed

_HOMES = {
    "ByteStream": "microagent.channel.stream",
    "ChannelClosed": "microagent.errors",
    "ChannelConnection": "microagent.channel.mux",
    "ChannelTimeout": "microagent.channel.errors",
    "ControlEvent": "microagent.channel.mux",
    "DataEvent": "microagent.channel.mux",
    "ErrorEvent": "microagent.channel.mux",
    "ExecRequest": "microagent.channel.exec",
    "ExecResult": "microagent.channel.exec",
    "ExecSession": "microagent.channel.exec",
    "ExitEvent": "microagent.channel.mux",
    "FdStream": "microagent.channel.stream",
    "FileStat": "microagent.channel.files",
    "ForwardStream": "microagent.channel.forward",
    "Frame": "microagent.channel.frames",
    "FrameDecoder": "microagent.channel.frames",
    "FrameType": "microagent.channel.frames",
    "GuestConnectFailed": "microagent.channel.errors",
    "GuestError": "microagent.channel.errors",
    "GuestNotFound": "microagent.channel.errors",
    "GuestPermissionDenied": "microagent.channel.errors",
    "INITIAL_WINDOW": "microagent.channel.frames",
    "MAX_DATA_CHUNK": "microagent.channel.frames",
    "MAX_PAYLOAD": "microagent.channel.frames",
    "OutputSink": "microagent.channel.exec",
    "OversizedFrame": "microagent.channel.frames",
    "PROTOCOL_VERSION": "microagent.channel.frames",
    "PortPublisher": "microagent.channel.forward",
    "ProtocolError": "microagent.channel.errors",
    "Session": "microagent.channel.mux",
    "SessionEnded": "microagent.channel.errors",
    "SessionEvent": "microagent.channel.mux",
    "SessionState": "microagent.channel.mux",
    "SocketStream": "microagent.channel.stream",
    "VersionMismatch": "microagent.channel.errors",
    "connect_firecracker_vsock": "microagent.channel.stream",
    "connect_unix": "microagent.channel.stream",
    "encode_frame": "microagent.channel.frames",
    "guest_error": "microagent.channel.errors",
    "open_channel": "microagent.channel.connect",
    "open_forward": "microagent.channel.forward",
    "open_shell": "microagent.channel.shell",
    "splice": "microagent.channel.forward",
}

__all__ = [
    "INITIAL_WINDOW",
    "MAX_DATA_CHUNK",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "ByteStream",
    "ChannelClosed",
    "ChannelConnection",
    "ChannelTimeout",
    "ControlEvent",
    "DataEvent",
    "ErrorEvent",
    "ExecRequest",
    "ExecResult",
    "ExecSession",
    "ExitEvent",
    "FdStream",
    "FileStat",
    "ForwardStream",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GuestConnectFailed",
    "GuestError",
    "GuestNotFound",
    "GuestPermissionDenied",
    "OutputSink",
    "OversizedFrame",
    "PortPublisher",
    "ProtocolError",
    "Session",
    "SessionEnded",
    "SessionEvent",
    "SessionState",
    "SocketStream",
    "VersionMismatch",
    "connect_firecracker_vsock",
    "connect_unix",
    "encode_frame",
    "guest_error",
    "open_channel",
    "open_forward",
    "open_shell",
    "splice",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(home)  # not importlib.import_module: importlib (and warnings) cost the CLI's start-up
    value = getattr(sys.modules[home], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
