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
"""

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
from microagent.channel.stream import (
    ByteStream,
    FdStream,
    SocketStream,
    connect_firecracker_vsock,
    connect_unix,
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
from microagent.channel.connect import open_channel
from microagent.channel.exec import ExecRequest, ExecResult, ExecSession, OutputSink
from microagent.channel.files import FileStat
from microagent.channel.forward import ForwardStream, PortPublisher, open_forward, splice
from microagent.channel.shell import open_shell
from microagent.errors import ChannelClosed

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
