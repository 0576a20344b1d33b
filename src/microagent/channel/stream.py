"""Byte streams the channel runs over (docs/protocol.md, transport table).

This module owns the narrow transport seam: :class:`ByteStream` (read, write,
close) and adapters for a connected socket (Unix socket, socketpair, a
Firecracker vsock UDS after its ``CONNECT`` handshake) and for a pair of file
descriptors (``--stdio`` agent mode). Framing, sessions and flow control stay
out of it; they live in :mod:`~microagent.channel.frames` and
:mod:`~microagent.channel.mux`.

``OSError`` is translated here: a failed connect raises :class:`ChannelClosed`
(the guest is not there yet, worth retrying), and read or write failures on an
established stream raise :class:`ChannelClosed` too.
"""

from __future__ import annotations

import _socket  # socket.py's own start-up (its enum conversions) costs every CLI exec ~4 ms
import _thread  # a lock without threading.py: the channel helper (one per workspace) never loads it
import os

from microagent.channel.limits import WRITE_STALL_TIMEOUT_S
from microagent.unixsock import connect_any_length
from microagent.errors import ChannelClosed, Permanent

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

__all__ = [
    "ByteStream",
    "FdStream",
    "SocketStream",
    "connect_firecracker_vsock",
    "connect_unix",
]


class SocketStream:
    """:class:`ByteStream` over a connected stream socket.

    :param sock: a connected ``SOCK_STREAM`` socket in blocking mode; the
        stream owns it from now on.
    :param write_stall_timeout: seconds a write may make no progress (the
        peer stopped reading) before it fails; ``None`` waits forever.
    """

    def __init__(self, sock: socket.socket, *,
                 write_stall_timeout: float | None = WRITE_STALL_TIMEOUT_S) -> None:
        sock.settimeout(None)
        self._sock = sock
        self._stall = write_stall_timeout
        self._closed = False
        self._lock = _thread.allocate_lock()

    @property
    def socket(self) -> socket.socket:
        """The underlying socket."""
        return self._sock

    def read(self, n: int) -> bytes:
        """Read up to ``n`` bytes; ``b""`` at end of stream or after close.

        :raises ChannelClosed: on a socket error other than a local close.
        """
        try:
            return self._sock.recv(n)
        except OSError as exc:
            if self._closed:
                return b""
            raise ChannelClosed(f"channel read failed: {exc}", "check that the guest is running") from exc

    def write(self, data: bytes) -> None:
        """Send all of ``data``.

        :raises ChannelClosed: when the socket is closed or the peer went away.
        """
        if self._closed:
            raise ChannelClosed("channel is closed")
        try:
            if self._stall is None or not hasattr(_socket, "MSG_DONTWAIT"):
                self._sock.sendall(data)
            else:
                self._send_or_give_up(memoryview(data).cast("B"), self._stall)
        except (OSError, ValueError) as exc:  # ValueError: closed by another thread meanwhile
            raise ChannelClosed(f"channel write failed: {exc}", "check that the guest is running") from exc

    def _send_or_give_up(self, view: memoryview, stall: float) -> None:
        # The socket stays blocking for the reader thread; writes are
        # non-blocking per call so a peer that stopped reading cannot hang us.
        poller = None
        while view:
            try:
                view = view[self._sock.send(view, _socket.MSG_DONTWAIT):]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            if poller is None:
                import select  # only once a write would block: it costs the CLI's start-up

                if not hasattr(select, "poll"):
                    self._sock.sendall(view)  # no poll here: wait as long as it takes
                    return
                poller = select.poll()
                poller.register(self._sock.fileno(), select.POLLOUT)
            if not poller.poll(stall * 1000):
                raise ChannelClosed(f"channel write made no progress for {stall:g} s (the peer stopped reading)",
                                    "check that the guest (or its channel helper) is still running")

    def close(self) -> None:
        """Shut the socket down (waking a blocked reader) and close it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class FdStream:
    """:class:`ByteStream` over a read fd and a write fd (pipes, stdio).

    :param read_fd: fd to read from; owned (closed by :meth:`close`).
    :param write_fd: fd to write to; owned. May equal ``read_fd``.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._rfd = read_fd
        self._wfd = write_fd
        self._closed = False
        self._lock = _thread.allocate_lock()

    def read(self, n: int) -> bytes:
        """Read up to ``n`` bytes; ``b""`` at end of stream or after close.

        :raises ChannelClosed: on a read error.
        """
        try:
            return os.read(self._rfd, n)
        except OSError as exc:
            if self._closed:
                return b""
            raise ChannelClosed(f"channel read failed: {exc}") from exc

    def write(self, data: bytes) -> None:
        """Write all of ``data``.

        :raises ChannelClosed: on a write error or after close.
        """
        if self._closed:
            raise ChannelClosed("channel is closed")
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._wfd, view)
                view = view[n:]
        except OSError as exc:
            raise ChannelClosed(f"channel write failed: {exc}") from exc

    def close(self) -> None:
        """Close both fds (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for fd in {self._rfd, self._wfd}:
            try:
                os.close(fd)
            except OSError:
                pass


def connect_unix(path: str | os.PathLike[str], timeout: float | None = 10.0) -> SocketStream:
    """Connect a Unix stream socket (QEMU chardev, agent ``--listen``).

    :param path: the socket path.
    :param timeout: connect timeout in seconds.
    :raises ChannelClosed: if nothing accepts on ``path``.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # socket.socket's C base: same calls
    sock.settimeout(timeout)
    try:
        connect_any_length(sock, os.fspath(path))
    except OSError as exc:
        sock.close()
        raise ChannelClosed(
            f"cannot connect to channel socket {os.fspath(path)}: {exc}",
            "check that the VM is running and the socket path is right",
        ) from exc
    return SocketStream(sock)


def connect_firecracker_vsock(
    uds_path: str | os.PathLike[str], port: int = 1024, timeout: float | None = 10.0
) -> SocketStream:
    """Connect to a guest vsock port through Firecracker's host-side UDS.

    Sends ``CONNECT <port>\\n`` and expects ``OK <n>\\n``; the bytes after
    that line belong to the channel (the line is read byte by byte so no
    channel byte is consumed).

    :param uds_path: the ``uds_path`` of the Firecracker vsock device.
    :param port: the guest's vsock port (1024 for the channel).
    :param timeout: timeout in seconds for connect and handshake.
    :raises ChannelClosed: if the UDS is absent or the guest is not listening
        yet (Firecracker closes the connection); worth retrying.
    :raises Permanent: if Firecracker answers something other than ``OK``.
    """
    stream = connect_unix(uds_path, timeout)
    sock = stream.socket
    sock.settimeout(timeout)
    try:
        sock.sendall(f"CONNECT {int(port)}\n".encode("ascii"))
        line = bytearray()
        while not line.endswith(b"\n"):
            b = sock.recv(1)
            if not b:
                raise ChannelClosed(
                    f"firecracker closed the vsock connection to port {port}",
                    "the guest is not listening yet; retry after it logs 'channel ready'",
                )
            line += b
            if len(line) > 128:
                raise Permanent(f"unexpected vsock handshake reply {bytes(line)!r}")
    except OSError as exc:
        stream.close()
        raise ChannelClosed(f"vsock handshake on {os.fspath(uds_path)} failed: {exc}") from exc
    except BaseException:
        stream.close()
        raise
    if not line.startswith(b"OK "):
        stream.close()
        raise Permanent(f"unexpected vsock handshake reply {bytes(line)!r}")
    sock.settimeout(None)
    return stream


def __getattr__(name: str) -> object:
    """:class:`ByteStream` is built on first use: it needs typing, which costs the CLI's start-up."""
    if name != "ByteStream":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from typing import Protocol, runtime_checkable

    global ByteStream

    @runtime_checkable
    class ByteStream(Protocol):
        """A reliable, ordered, bidirectional byte stream.

        One thread reads while others write; ``close`` may be called from any
        thread and must make a blocked ``read`` return.
        """

        def read(self, n: int) -> bytes:
            """Read up to ``n`` bytes; ``b""`` means end of stream.

            :raises ChannelClosed: when the transport fails.
            """
            ...

        def write(self, data: bytes) -> None:
            """Write all of ``data``.

            :raises ChannelClosed: when the transport fails or is closed.
            """
            ...

        def close(self) -> None:
            """Close the stream; idempotent."""
            ...

    return ByteStream
