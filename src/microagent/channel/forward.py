"""The ``forward`` session kind (docs/protocol.md, "forward").

This module owns TCP forwarding to a port inside the guest:
:class:`ForwardStream` is a socket-like duplex over one forward session,
:func:`splice` joins it to a host socket with two threads, and
:class:`PortPublisher` accepts host TCP connections and forwards each to a
guest port (the machinery behind ``--publish``).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

from microagent.channel.errors import ChannelTimeout, ProtocolError, SessionEnded
from microagent.channel.frames import MAX_DATA_CHUNK, STDIN, STDOUT
from microagent.channel.mux import ChannelConnection, ControlEvent, DataEvent, ErrorEvent, ExitEvent, Session
from microagent.errors import ChannelClosed, Conflict, InvalidRequest

__all__ = ["ForwardStream", "PortPublisher", "open_forward", "splice"]

log = logging.getLogger(__name__)


class ForwardStream:
    """A connected TCP stream to a guest port, with a socket-like API.

    One thread may :meth:`recv` while another :meth:`sendall`\\s.
    """

    def __init__(self, session: Session, port: int, host: str) -> None:
        self.session = session
        self.port = port
        self.host = host
        self._rlock = threading.Lock()
        self._pending = b""
        self._eof = False
        self._write_shut = False

    def __enter__(self) -> ForwardStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ForwardStream {self.host}:{self.port} session {self.session.id}>"

    def recv(self, bufsize: int = MAX_DATA_CHUNK, timeout: float | None = None) -> bytes:
        """Return up to ``bufsize`` bytes from the guest; ``b""`` at end of stream.

        :raises ChannelTimeout: if nothing arrived within ``timeout`` seconds.
        :raises GuestError: if the guest ended the session with an ERROR.
        :raises ChannelClosed: if the channel went away.
        """
        with self._rlock:
            while not self._pending:
                if self._eof:
                    return b""
                try:
                    event = self.session.recv(timeout)
                except SessionEnded:
                    self._eof = True
                    return b""
                if isinstance(event, DataEvent):
                    if event.stream != STDOUT:
                        continue
                    if not event.data:
                        self._eof = True
                    else:
                        self._pending = event.data
                elif isinstance(event, ExitEvent):
                    self._eof = True
                elif isinstance(event, ErrorEvent):
                    self._eof = True
                    raise event.to_exception()
            out, self._pending = self._pending[:bufsize], self._pending[bufsize:]
            return out

    def sendall(self, data: bytes, timeout: float | None = None) -> None:
        """Send all of ``data`` to the guest (waits for credit).

        :raises SessionEnded: if the forward already ended (like ``EPIPE``).
        :raises ChannelTimeout: if no credit arrived within ``timeout`` seconds.
        :raises ChannelClosed: if the channel went away.
        """
        if self._write_shut:
            raise SessionEnded(f"forward to {self.host}:{self.port} was shut down for writing")
        self.session.send_data(STDIN, data, timeout)

    def shutdown_write(self) -> None:
        """Half-close: send EOF so the guest does ``shutdown(SHUT_WR)``."""
        if self._write_shut:
            return
        self._write_shut = True
        try:
            self.session.send_eof(STDIN)
        except (SessionEnded, ChannelClosed):
            pass

    def close(self) -> None:
        """Abandon the forward (``CLOSE``); idempotent."""
        self._write_shut = True
        self.session.close()


def open_forward(
    conn: ChannelConnection, port: int, host: str = "127.0.0.1", *, timeout: float | None = 10.0
) -> ForwardStream:
    """Connect to TCP ``host:port`` inside the guest.

    :raises InvalidRequest: if ``port`` is not 1..65535.
    :raises GuestConnectFailed: if nothing accepted the connection in the guest.
    :raises GuestError: for another guest ERROR.
    :raises ChannelTimeout: if the guest did not answer within ``timeout``.
    :raises ChannelClosed: if the channel went away.
    """
    if not 1 <= int(port) <= 65535:
        raise InvalidRequest(f"port {port} is out of range")
    session = conn.open_session("forward", port=int(port), host=host)
    try:
        while True:
            event = session.recv(timeout)
            if isinstance(event, ControlEvent):
                if event.body.get("connected") is True:
                    return ForwardStream(session, int(port), host)
            elif isinstance(event, ErrorEvent):
                raise event.to_exception()
            elif isinstance(event, ExitEvent):
                raise ProtocolError(f"forward to {host}:{port} ended before it connected")
            elif isinstance(event, DataEvent):
                raise ProtocolError(f"forward to {host}:{port} sent data before it connected")
    except BaseException:
        session.close()
        raise


def splice(sock: socket.socket, fwd: ForwardStream, *, on_done: Callable[[], object] | None = None) -> threading.Thread:
    """Copy bytes both ways between a host socket and a forward, in threads.

    EOF in either direction is passed on as a half-close; when both
    directions ended (or either failed) both ends are closed and ``on_done``
    is called. Returns the supervising thread (already started; daemon).
    """

    def host_to_guest() -> None:
        try:
            while True:
                data = sock.recv(MAX_DATA_CHUNK)
                if not data:
                    break
                fwd.sendall(data)
            fwd.shutdown_write()
        except (OSError, SessionEnded, ChannelClosed, ChannelTimeout):
            fwd.close()
            _shut(sock, socket.SHUT_RDWR)

    def guest_to_host() -> None:
        try:
            while True:
                data = fwd.recv(MAX_DATA_CHUNK)
                if not data:
                    break
                sock.sendall(data)
            _shut(sock, socket.SHUT_WR)
        except Exception as exc:  # guest error, channel gone, host socket failed
            log.debug("forward %r ended: %r", fwd, exc)
            fwd.close()
            _shut(sock, socket.SHUT_RDWR)

    def supervise() -> None:
        a = threading.Thread(target=host_to_guest, daemon=True, name="microagent-splice-up")
        b = threading.Thread(target=guest_to_host, daemon=True, name="microagent-splice-down")
        a.start()
        b.start()
        b.join()
        a.join()
        fwd.close()
        try:
            sock.close()
        except OSError:
            pass
        if on_done is not None:
            on_done()

    t = threading.Thread(target=supervise, daemon=True, name="microagent-splice")
    t.start()
    return t


def _shut(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def bind_listener(host_address: str, host_port: int) -> socket.socket:
    """A listening TCP socket on ``host_address:host_port``.

    :raises Conflict: if the port is in use (or the address is not local).
    """
    family = socket.AF_INET6 if ":" in host_address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host_address, host_port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise Conflict(
            f"cannot listen on {host_address}:{host_port}: {exc.strerror or exc}",
            "choose another host port (-p HOST_PORT:GUEST_PORT)",
        ) from exc
    return sock


class PortPublisher:
    """Listen on a host TCP address and forward each connection to a guest port.

    :param conn: the channel.
    :param guest_port: the TCP port inside the guest.
    :param host_port: the host port to listen on (0 = pick one; see :attr:`address`).
    :param host_address: the host address to bind (default loopback only).
    :param guest_host: the address the guest connects to.
    :raises Conflict: if the host port is in use.
    """

    def __init__(
        self,
        conn: ChannelConnection,
        guest_port: int,
        host_port: int = 0,
        *,
        host_address: str = "127.0.0.1",
        guest_host: str = "127.0.0.1",
        listener: socket.socket | None = None,
    ) -> None:
        self.conn = conn
        self.guest_port = guest_port
        self.guest_host = guest_host
        if listener is not None:
            self._listener = listener  # bound and listening already (bound before boot)
        else:
            self._listener = bind_listener(host_address, host_port)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="microagent-publish")
        self._thread.start()

    def __enter__(self) -> PortPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="microagent-publish-conn").start()

    def _serve(self, client: socket.socket) -> None:
        try:
            fwd = open_forward(self.conn, self.guest_port, self.guest_host)
        except Exception as exc:
            log.info("publish %s -> guest %d: %s", self.address, self.guest_port, exc)
            client.close()
            return
        splice(client, fwd)

    def close(self) -> None:
        """Stop accepting (open connections keep going until they end)."""
        self._stop.set()
        _shut(self._listener, socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(2)
