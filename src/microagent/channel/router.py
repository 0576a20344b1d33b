"""The per-workspace channel helper: one guest connection, many host clients.

QEMU's virtio-serial chardev and Firecracker's vsock serve one connection at
a time, but a running workspace has many users (exec, connect, cp, published
ports).  This process holds the single guest connection and listens on
``control.sock``; each client speaks the very same framed protocol
(docs/protocol.md), so :func:`microagent.channel.open_channel` works
unchanged against either end.

Routing rules (docs/protocol.md, "The helper"):

- A client ``HELLO`` is answered locally with the guest's cached ``HELLO``;
  it is never forwarded (a guest ``HELLO`` resets every session).
- Client session ids are rewritten to helper-unique guest ids and back.
  Flow control stays end to end: ``WINDOW`` frames are rewritten, not
  consumed, so the helper buffers at most what the windows allow.
- A client that disconnects has its open sessions ``CLOSE``d in the guest.
- When the guest connection ends (the VM powered off or died) every client
  is told so (``ERROR guest_closed`` on session 0: a client that loses the
  helper without it knows the helper died, not the guest), disconnected,
  and the helper exits.
- With ``--vm-events`` (QEMU's second QMP monitor) the helper follows why
  the VM is paused (:mod:`microagent.channel.vm_events`): while the
  VMM has stopped it for lack of disk space a new session is refused at
  once with ``ERROR resource_exhausted`` rather than left hanging.
- Every buffer is bounded: the helper checks both windows of every session
  (an overrun ends that session), stops reading the guest while a client is
  not reading its output (and drops that client if it stays so), stops
  reading clients while the guest is not reading, and drops clients that do
  not HELLO in time or get it wrong.

Run as ``python -m microagent.channel.router --guest unix:PATH --listen PATH``
(or ``--guest fc-vsock:UDS:PORT``).  Single-threaded: one ``poll`` loop.

One helper runs per workspace, so what it imports is memory every workspace
pays: it uses ``_socket``, ``_signal``, ``select.poll`` and
:mod:`microagent.jsonlite` rather than ``socket``, ``signal``, ``selectors``
and ``json``, which between them load ``enum``, ``re`` and ``collections``
(``tests/agent/test_helper_imports.py`` keeps them out).
"""

from __future__ import annotations

import _signal
import _socket
import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs each helper memory (one helper per workspace); so do argparse and pathlib
    import socket
    from typing import Any, Callable

from microagent import jsonlite

from microagent.channel.errors import ProtocolError
from microagent.channel.frames import (
    INITIAL_WINDOW,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    STDERR,
    STDIN,
    STDOUT,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    decode_data,
    decode_json,
    decode_window,
    encode_frame,
    json_frame,
)
from microagent.fsutil import atomic_write, restrict_umask

READ_CHUNK = 256 * 1024
#: beside the control endpoint (the run dir): ``{"execs": N}``, read by ``stats``
EXEC_COUNT_FILE = "exec-count.json"
#: the guest's HELLO normally answers within milliseconds; silence this long means ours was lost
HELLO_RESEND_S = 0.5
#: a restored guest drops what arrives while its port reopens (often our first HELLO): the
#: resends start this soon and double up to HELLO_RESEND_S (a fixed 0.5 s cost one warm
#: ``run`` in three about 0.45 s). Repeats are harmless: all precede any session frame.
RESTORE_FIRST_RESEND_S = 0.02
# Ends a session; the mapping is dropped once the guest sends one of these.
_FINAL = (FrameType.EXIT, FrameType.ERROR)
_GUEST_STREAMS = (STDOUT, STDERR)
_MAX_WARNINGS = 200  # protocol-violation log lines per helper run (a peer can provoke endless ones)
READ, WRITE = 1, 2  # interest in a descriptor, as selectors.EVENT_READ and EVENT_WRITE


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} microagent-router: {message}\n")
    sys.stderr.flush()


class Poller:
    """The part of :mod:`selectors` the helper uses, on ``select.poll`` (``select.select``
    where there is no ``poll``: Windows' Hyper-V helper), without selectors' imports.

    Registered objects are sockets (or anything with ``fileno()``) with a
    ``data`` of the caller's; :meth:`select` yields ``(data, events)``.
    """

    def __init__(self) -> None:
        self._poll = select.poll() if hasattr(select, "poll") else None
        self._keys: dict[int, tuple[Any, Any, int]] = {}  # fd -> (object, data, events)

    def _fd(self, fileobj: Any) -> int:
        fd: int = fileobj.fileno()
        if fd < 0:  # closed since it was registered: find it by identity, as selectors does
            fd = next((k for k, (obj, _, _) in self._keys.items() if obj is fileobj), -1)
        if fd < 0:
            raise KeyError(f"{fileobj!r} is closed and not registered")
        return fd

    @staticmethod
    def _mask(events: int) -> int:
        return (select.POLLIN if events & READ else 0) | (select.POLLOUT if events & WRITE else 0)

    def register(self, fileobj: Any, events: int, data: Any) -> None:
        fd = self._fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"fd {fd} is already registered")
        if self._poll is not None:
            self._poll.register(fd, self._mask(events))
        self._keys[fd] = (fileobj, data, events)

    def modify(self, fileobj: Any, events: int, data: Any) -> None:
        fd = self._fd(fileobj)
        if fd not in self._keys:
            raise KeyError(f"fd {fd} is not registered")
        if self._poll is not None:
            self._poll.modify(fd, self._mask(events))
        self._keys[fd] = (fileobj, data, events)

    def unregister(self, fileobj: Any) -> None:
        fd = self._fd(fileobj)
        del self._keys[fd]
        if self._poll is not None:
            self._poll.unregister(fd)

    def select(self, timeout: float) -> list[tuple[Any, int]]:
        """``(data, events)`` of each ready object, waiting at most ``timeout`` seconds."""
        if self._poll is not None:
            ready = [(fd, (READ if ev & ~select.POLLOUT else 0) | (WRITE if ev & ~select.POLLIN else 0))
                     for fd, ev in self._poll.poll(max(0, int(timeout * 1000 + 0.999)))]
        else:
            readers = [fd for fd, (_, _, ev) in self._keys.items() if ev & READ]
            writers = [fd for fd, (_, _, ev) in self._keys.items() if ev & WRITE]
            if not readers and not writers:
                time.sleep(timeout)
                return []
            r, w, _ = select.select(readers, writers, [], timeout)
            ready = [(fd, READ) for fd in r] + [(fd, WRITE) for fd in w]
        out = []
        for fd, events in ready:
            key = self._keys.get(fd)
            if key is not None and events & key[2]:  # HUP and errors wake whatever is registered
                out.append((key[1], events & key[2]))
        return out


# Plain classes with slots rather than dataclasses: one helper runs per
# workspace, and dataclasses (with inspect) costs each of them memory.
class Peer:
    """One socket with its decoder and pending output."""

    __slots__ = ("sock", "decoder", "out", "hello_done", "sessions", "accepted_at", "stalled_since", "events")

    def __init__(self, sock: socket.socket, *, hello_done: bool = False) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.out = bytearray()
        self.hello_done = hello_done
        self.sessions: dict[int, int] = {}  # client session id -> guest session id (clients only)
        self.accepted_at = time.monotonic()
        self.stalled_since: float | None = None  # out has been above the high mark since
        self.events = 0  # selector interest currently registered (0 = unregistered)


class Route:
    """One guest session and the credit the helper has seen granted each way.

    The helper checks the windows itself, so a peer that sends DATA past
    the credit it was given loses that session before its bytes are queued.
    """

    __slots__ = ("client", "client_sid", "to_client", "to_guest", "ended_streams")

    def __init__(self, client: Peer, client_sid: int) -> None:
        self.client = client
        self.client_sid = client_sid
        self.to_client = dict.fromkeys(_GUEST_STREAMS, INITIAL_WINDOW)
        self.to_guest = INITIAL_WINDOW
        self.ended_streams: set[int] = set()


class Router:
    # Bounds (instance attributes may be lowered, e.g. by tests).
    client_out_high = 1 << 20
    """Bytes queued for one client above which the helper stops reading the guest and that client."""
    guest_out_high = 1 << 20
    """Bytes queued for the guest above which the helper stops reading every client."""
    client_stall_s = 10.0
    """Seconds a client may stay above ``client_out_high`` (not reading) before it is disconnected."""
    hello_timeout_s = 5.0
    """Seconds a new client has to complete its HELLO."""
    max_clients = 64
    max_sessions_per_client = 256
    count_interval_s = 0.5
    """Seconds between writes of ``exec-count.json`` (so ``stats`` lags by at most about this)."""
    serial_check_s = 1.0
    """Seconds between checks of the console log's size (:data:`microagent.serial_log.CHECK_INTERVAL_S`)."""

    def __init__(self, guest: socket.socket, listener: socket.socket, token: str | None = None) -> None:
        self.token = token  # required in every client HELLO when set (the loopback-TCP endpoint)
        self.sel = Poller()
        self.guest = Peer(guest)
        self.listener = listener
        self.clients: dict[int, Peer] = {}  # fileno -> peer
        self.routes: dict[int, Route] = {}  # guest sid -> route
        self.next_sid = 1
        self.guest_hello: bytes = b""
        self.running = True
        self._warnings = 0
        self.vm_events: Any = None  # a PauseWatcher when the VMM reports pauses
        self.exec_count = 0  # exec sessions opened through this run dir's helpers (``stats``)
        self.count_path: str | None = None  # where the count is published (exec-count.json)
        self._count_written = 0
        self._count_written_at = 0.0
        self.serial_cap: tuple[str, int] | None = None  # the console log kept under its cap, and the cap
        self._serial_checked_at = 0.0
        guest.setblocking(False)
        listener.setblocking(False)

    def _warn(self, message: str) -> None:
        """Log a peer's misbehaviour, a bounded number of times."""
        self._warnings += 1
        if self._warnings <= _MAX_WARNINGS:
            log(message)
        elif self._warnings == _MAX_WARNINGS + 1:
            log("further protocol violations are not logged")

    # --- guest handshake -----------------------------------------------------

    def handshake(self, timeout: float, generation: int | None = None) -> None:
        """Send HELLO and wait for the guest's, before serving any client.

        ``generation`` (a guest just restored from a snapshot) goes in our HELLO;
        guest init echoes it in its own, which every client then gets.

        :raises TimeoutError: no answer in time.
        :raises ConnectionError: the guest closed or refused.
        """
        sock = self.guest.sock
        sock.setblocking(True)
        sock.settimeout(timeout)
        hello = json_frame(0, FrameType.HELLO, {"protocol": PROTOCOL_NAME, "version": PROTOCOL_VERSION, "role": "host",
                                                **({"generation": generation} if generation is not None else {})})
        sock.sendall(hello)
        deadline = time.monotonic() + timeout
        wait = RESTORE_FIRST_RESEND_S if generation is not None else HELLO_RESEND_S
        resend_at = time.monotonic() + wait
        while True:
            # A guest restored from a snapshot sees its port hang up and reopen, and drops
            # what arrived meanwhile, our HELLO included: say it again until it answers.
            sock.settimeout(max(0.01, min(deadline, resend_at) - time.monotonic()))
            try:
                data = sock.recv(READ_CHUNK)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                sock.sendall(hello)
                wait = min(wait * 2, HELLO_RESEND_S)
                resend_at = time.monotonic() + wait
                continue
            if not data:
                raise GuestClosed("guest closed the channel during the handshake")
            for item in self.guest.decoder.feed(data):
                if isinstance(item, Frame) and item.session == 0 and item.type == FrameType.HELLO:
                    self.guest_hello = item.payload
                    sock.setblocking(False)
                    return
                if isinstance(item, Frame) and item.session == 0 and item.type == FrameType.ERROR:
                    raise ConnectionError(f"guest refused HELLO: {item.payload[:200]!r}")

    # --- event loop ----------------------------------------------------------

    def serve(self) -> None:
        self.sel.register(self.listener, READ, None)
        if self.vm_events is not None:
            self.sel.register(self.vm_events, READ, self.vm_events)
        self._set_events(self.guest, READ)
        while self.running:
            for peer, events in self.sel.select(min(0.25, self.serial_check_s)):
                if peer is None:
                    self._accept()
                    continue
                if peer is self.vm_events:
                    self._read_vm_events()
                    continue
                if peer is not self.guest and peer.sock.fileno() not in self.clients:
                    continue  # dropped earlier in this round
                if events & WRITE:
                    self._flush(peer)
                if events & READ and self.running and peer.events & READ:
                    self._read(peer)
            self._expire_clients()
            self._update_interest()
            self.publish_exec_count()
            self._cap_serial_log()

    def _cap_serial_log(self) -> None:
        """Keep the guest's console log under its cap, checked every :attr:`serial_check_s`
        (here, not in a thread of its own: helper memory)."""
        now = time.monotonic()
        if self.serial_cap is None or now - self._serial_checked_at < self.serial_check_s:
            return
        from microagent.serial_log import enforce_cap

        self._serial_checked_at = now
        try:
            enforce_cap(*self.serial_cap)
        except OSError:
            pass  # the runtime directory is going away, or a transient error: next time

    def _read_vm_events(self) -> None:
        before = self.vm_events.reason
        if not self.vm_events.on_readable():
            self.sel.unregister(self.vm_events)  # QEMU exited: the guest channel ends too
            self.vm_events.close()
            self.vm_events = None
            return
        reason = self.vm_events.reason
        if reason != before:
            log(f"the VMM paused the VM: {reason}" if reason else "the VM runs again")
            if reason:
                _note_paused(os.path.dirname(self.vm_events.path), reason)

    def _set_events(self, peer: Peer, events: int) -> None:
        if events == peer.events:
            return
        try:
            if not events:
                self.sel.unregister(peer.sock)
            elif not peer.events:
                self.sel.register(peer.sock, events, peer)
            else:
                self.sel.modify(peer.sock, events, peer)
        except (KeyError, ValueError, OSError):
            return
        peer.events = events

    def _update_interest(self) -> None:
        """Backpressure: read only from peers whose output has somewhere to go.

        A client that stops reading holds up the guest (so the helper never
        buffers more than ``client_out_high`` for it) until it drains or
        :meth:`_expire_clients` drops it; a guest that stops reading holds up
        every client's input the same way.
        """
        clients_ok = all(len(c.out) <= self.client_out_high for c in self.clients.values())
        guest_ok = len(self.guest.out) <= self.guest_out_high
        self._set_events(self.guest, (READ if clients_ok else 0) | (WRITE if self.guest.out else 0))
        for c in list(self.clients.values()):
            readable = guest_ok and len(c.out) <= self.client_out_high
            self._set_events(c, (READ if readable else 0) | (WRITE if c.out else 0))

    def _expire_clients(self) -> None:
        now = time.monotonic()
        for c in list(self.clients.values()):
            if not c.hello_done and now - c.accepted_at > self.hello_timeout_s:
                self._warn(f"client sent no HELLO within {self.hello_timeout_s:g} s; disconnected")
                self._drop_client(c)
            elif len(c.out) > self.client_out_high:
                if c.stalled_since is None:
                    c.stalled_since = now
                elif now - c.stalled_since > self.client_stall_s:
                    self._warn(f"client stopped reading ({len(c.out)} bytes queued for "
                               f"{self.client_stall_s:g} s); disconnected")
                    self._drop_client(c)
            else:
                c.stalled_since = None

    def _accept(self) -> None:
        try:  # _accept: the listener may be a _socket.socket, which has no accept()
            sock = _socket.socket(fileno=self.listener._accept()[0])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. out of file descriptors: keep serving the others
            self._warn(f"accept failed: {exc}")
            return
        if len(self.clients) >= self.max_clients:
            self._warn(f"more than {self.max_clients} clients; connection refused")
            sock.close()
            return
        sock.setblocking(False)
        peer = Peer(sock)
        self.clients[sock.fileno()] = peer
        self._set_events(peer, READ)

    def _read(self, peer: Peer) -> None:
        try:
            data = peer.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if peer is self.guest:
                log("guest channel closed; exiting")
                self.running = False
                for c in list(self.clients.values()):
                    self._error(c, 0, "guest_closed", "the guest closed its channel (the VM powered off or died)")
            else:
                self._drop_client(peer)
            return
        for item in peer.decoder.feed(data):
            if peer is self.guest:
                self._from_guest(item)
            else:
                self._from_client(peer, item)
                if peer.sock.fileno() not in self.clients:
                    return

    def _send(self, peer: Peer, data: bytes) -> None:
        if peer is not self.guest and peer.sock.fileno() not in self.clients:
            return
        peer.out += data
        self._flush(peer)

    def _flush(self, peer: Peer) -> None:
        while peer.out:
            try:
                n = peer.sock.send(peer.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                if peer is self.guest:
                    self.running = False
                else:
                    self._drop_client(peer)
                return
            del peer.out[:n]

    # --- routing -------------------------------------------------------------

    def _from_guest(self, item: Frame | OversizedFrame) -> None:
        if item.session == 0:
            return  # connection-level chatter from the guest is for us only
        route = self.routes.get(item.session)
        if route is None:
            return  # a session its client already abandoned
        if isinstance(item, OversizedFrame):
            self._guest_broke(item.session, route, "frame_too_large", f"frame of {item.length} bytes exceeds 1 MiB")
            return
        problem = self._check_from_guest(route, item)
        if problem is not None:
            self._guest_broke(item.session, route, *problem)
            return
        if item.type in _FINAL:
            del self.routes[item.session]
            route.client.sessions.pop(route.client_sid, None)
        self._send(route.client, encode_frame(route.client_sid, item.type, item.payload))

    @staticmethod
    def _check_from_guest(route: Route, item: Frame) -> tuple[str, str] | None:
        """Keep the guest to the windows its client granted; ``(code, message)`` if it broke them."""
        try:
            if item.type == FrameType.DATA:
                stream, data = decode_data(item.payload)
                if stream not in route.to_client or stream in route.ended_streams:
                    return "bad_request", f"DATA on stream {stream}, which is not open for the guest"
                if not data:
                    route.ended_streams.add(stream)
                    return None
                route.to_client[stream] -= len(data)
                if route.to_client[stream] < 0:
                    return "flow_control", f"guest overran the client's credit on stream {stream}"
            elif item.type == FrameType.WINDOW:
                stream, increment = decode_window(item.payload)
                if stream == STDIN:
                    route.to_guest += increment
        except ProtocolError as exc:
            return "bad_request", exc.message
        return None

    def _guest_broke(self, gsid: int, route: Route, code: str, message: str) -> None:
        """End a session whose guest side broke the protocol: tell both ends."""
        self._warn(f"guest session {gsid}: {message}")
        del self.routes[gsid]
        route.client.sessions.pop(route.client_sid, None)
        self._error(self.guest, gsid, code, message)
        self._error(route.client, route.client_sid, code, message)

    def _error(self, peer: Peer, sid: int, code: str, message: str) -> None:
        self._send(peer, json_frame(sid, FrameType.ERROR, {"code": code, "message": message}))

    def _refuse(self, peer: Peer, sid: int, code: str, message: str) -> None:
        """Answer a client that never completed HELLO, then hang up on it."""
        self._warn(f"client refused ({code}): {message}")
        self._error(peer, sid, code, message)
        self._drop_client(peer)

    def _from_client(self, peer: Peer, item: Frame | OversizedFrame) -> None:
        if isinstance(item, OversizedFrame):
            if not peer.hello_done:
                self._refuse(peer, item.session, "frame_too_large", "send HELLO first")
                return
            self._error(peer, item.session, "frame_too_large", f"frame of {item.length} bytes exceeds 1 MiB")
            self._abandon(peer, item.session)
            return
        if item.session == 0:
            if item.type == FrameType.HELLO:
                self._client_hello(peer, item)
            elif not peer.hello_done:
                self._refuse(peer, 0, "no_hello", "send HELLO first")
            return
        if not peer.hello_done:
            self._refuse(peer, item.session, "no_hello", "send HELLO first")
            return
        if item.type == FrameType.OPEN:
            paused_for = self.vm_events.reason if self.vm_events is not None else None
            if paused_for:
                from microagent.channel.vm_events import paused_detail

                self._error(peer, item.session, "resource_exhausted",
                            "the VM is " + paused_detail(os.path.basename(os.getcwd()), paused_for))
                return
            if item.session in peer.sessions:
                self._error(peer, item.session, "session_exists", f"session {item.session} is already open")
                return
            if len(peer.sessions) >= self.max_sessions_per_client:
                self._error(peer, item.session, "too_many_sessions",
                            f"a client may have at most {self.max_sessions_per_client} sessions open")
                return
            gsid = self.next_sid
            self.next_sid += 1
            peer.sessions[item.session] = gsid
            self.routes[gsid] = Route(peer, item.session)
            self._send(self.guest, encode_frame(gsid, item.type, item.payload))
            if _open_kind(item.payload) == "exec":
                self.exec_count += 1
            return
        mapped = peer.sessions.get(item.session)
        if mapped is None:
            return  # unknown or finished session: ignored, as the guest would
        if item.type in (FrameType.CLOSE, FrameType.ERROR):
            self._abandon(peer, item.session)
            return
        problem = self._check_from_client(self.routes[mapped], item)
        if problem is not None:
            self._error(peer, item.session, *problem)
            self._abandon(peer, item.session)
            return
        self._send(self.guest, encode_frame(mapped, item.type, item.payload))

    @staticmethod
    def _check_from_client(route: Route, item: Frame) -> tuple[str, str] | None:
        """Keep a client to the window the guest granted; ``(code, message)`` if it broke it."""
        try:
            if item.type == FrameType.DATA:
                stream, data = decode_data(item.payload)
                if stream != STDIN:
                    return "bad_request", f"DATA on stream {stream}; clients send on stream 0 only"
                route.to_guest -= len(data)
                if route.to_guest < 0:
                    return "flow_control", "client overran the guest's credit on stream 0"
            elif item.type == FrameType.WINDOW:
                stream, increment = decode_window(item.payload)
                if stream in route.to_client:
                    route.to_client[stream] += increment
        except ProtocolError as exc:
            return "bad_request", exc.message
        return None

    def _client_hello(self, peer: Peer, item: Frame) -> None:
        try:
            body: dict[str, Any] = decode_json(item.payload)
        except ProtocolError:
            self._refuse(peer, 0, "bad_request", "HELLO payload is not a JSON object")
            return
        if body.get("version") != PROTOCOL_VERSION:
            self._refuse(peer, 0, "version_mismatch",
                         f"helper speaks version {PROTOCOL_VERSION}, not {body.get('version')!r}")
            return
        if self.token is not None and not _token_matches(body.get("token"), self.token):
            self._refuse(peer, 0, "policy_denied", "this control endpoint needs the token from control.json")
            return
        for sid in list(peer.sessions):
            self._abandon(peer, sid)  # a re-HELLO resets this client's sessions only
        peer.hello_done = True
        self._send(peer, encode_frame(0, FrameType.HELLO, self.guest_hello))

    def _abandon(self, peer: Peer, client_sid: int) -> None:
        gsid = peer.sessions.pop(client_sid, None)
        if gsid is not None:
            self.routes.pop(gsid, None)
            self._send(self.guest, encode_frame(gsid, FrameType.CLOSE))

    def _drop_client(self, peer: Peer) -> None:
        fileno = peer.sock.fileno()
        if self.clients.pop(fileno, None) is None:
            return
        for sid in list(peer.sessions):
            self._abandon(peer, sid)
        self._set_events(peer, 0)
        peer.sock.close()

    def load_exec_count(self, path: str) -> None:
        """Publish the count at ``path``, continuing the one a previous helper of this run dir left."""
        self.count_path = path
        try:
            with open(path, "rb") as fh:
                doc = jsonlite.loads(fh.read(4096).decode("utf-8"))
            count = doc.get("execs") if isinstance(doc, dict) else None
        except (OSError, ValueError):
            count = None
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            self.exec_count = self._count_written = count

    def publish_exec_count(self, *, force: bool = False) -> None:
        """Write the count when it changed, at most once per :attr:`count_interval_s`
        (an fsynced write per exec would cost more than the count is worth)."""
        if self.count_path is None or self.exec_count == self._count_written:
            return
        now = time.monotonic()
        if not force and now - self._count_written_at < self.count_interval_s:
            return
        try:
            atomic_write(self.count_path, jsonlite.dumps({"execs": self.exec_count}).encode())
        except OSError as exc:  # a full disk: the count is informational; routing goes on
            self._warn(f"cannot write {self.count_path}: {exc}")
        self._count_written, self._count_written_at = self.exec_count, now

    def close(self) -> None:
        self.publish_exec_count(force=True)
        for peer in list(self.clients.values()):
            self._drop_client(peer)
        self.guest.sock.close()
        self.listener.close()


def _open_kind(payload: bytes) -> object:
    """The ``kind`` of an ``OPEN`` payload (``None`` when it is not a JSON object)."""
    try:
        doc = decode_json(payload)
    except (ProtocolError, ValueError):
        return None
    return doc.get("kind") if isinstance(doc, dict) else None


def _note_paused(runtime_dir: str, reason: str) -> None:
    """Mark the workspace paused in its record (best effort: the disk may be full)."""
    from microagent.channel.vm_events import mark_paused

    try:
        mark_paused(runtime_dir, reason)
    except (OSError, ValueError) as exc:
        log(f"could not record the pause: {exc}")


def watch_vm_events(path: str) -> Any:
    """A :class:`~microagent.channel.vm_events.PauseWatcher` on ``path``, or ``None``."""
    from microagent.channel.vm_events import PauseWatcher

    try:
        watcher = PauseWatcher(os.path.abspath(path))
    except (OSError, ValueError, ConnectionError) as exc:
        log(f"not following VM pauses: cannot use the QMP monitor {path}: {exc}")
        return None
    if watcher.reason:
        _note_paused(os.path.dirname(watcher.path), watcher.reason)
    return watcher


def _token_matches(given: object, token: str) -> bool:
    """Constant-time token check on bytes (``compare_digest`` refuses non-ASCII str)."""
    if not isinstance(given, str):
        return False
    import hmac  # here: only the loopback-TCP endpoint has a token (helper memory)

    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8"))


class GuestClosed(ConnectionError):
    """The guest closed the channel before answering HELLO (it may accept a new connection)."""


def connect_guest(spec: str, deadline: float) -> socket.socket:
    """Connect the guest transport named by ``spec``, retrying until ``deadline``.

    ``unix:PATH`` (QEMU chardev) or ``fc-vsock:UDS:PORT`` (Firecracker).
    """
    from microagent.channel.stream import connect_firecracker_vsock, connect_unix
    from microagent.errors import ChannelClosed

    kind, _, rest = spec.partition(":")
    while True:
        try:
            if kind == "unix":
                stream = connect_unix(rest, timeout=2.0)
            elif kind == "fc-vsock":
                uds, _, port = rest.rpartition(":")
                stream = connect_firecracker_vsock(uds, int(port), timeout=2.0)
            else:
                raise SystemExit(f"unknown guest transport {spec!r}")
            return stream.socket
        except ChannelClosed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def bind_listener(path: str) -> socket.socket:
    """Listen on ``path``, from inside its directory (any path length works)."""
    from microagent.unixsock import listen_unix

    directory, name = os.path.split(os.path.abspath(path))
    os.chdir(directory)
    return listen_unix(name)


def bind_tcp_control(listen_path: str) -> tuple[socket.socket, str]:
    """A loopback-TCP control endpoint, for hosts without AF_UNIX (Windows' CPython).

    Loopback TCP is reachable by every local user, so each client must show a
    random token in its ``HELLO``; the address and token are written to
    ``control.json`` beside ``listen_path`` (atomically, mode 0600), which is
    what :func:`microagent.channel.open_channel` reads.

    :returns: the listening socket and the token.
    """
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    host, port = sock.getsockname()[:2]
    token = os.urandom(16).hex()  # as secrets.token_hex, without loading secrets into the helper
    directory = os.path.dirname(os.path.abspath(listen_path))
    atomic_write(os.path.join(directory, "control.json"),
                 jsonlite.dumps({"transport": "tcp", "address": f"{host}:{port}", "token": token}).encode())
    return sock, token


def start_publishers(control: str, specs: list[str]) -> None:
    """Serve ``--publish FD:GUESTPORT`` listeners (bound by the supervisor before boot).

    A thread of this process connects to our own control socket like any
    client, so published connections get the same session handling and flow
    control as exec or cp.  Listeners die with this process: quarantine and
    teardown need to kill only the helper.
    """
    import socket
    import threading

    def run() -> None:
        from microagent.channel.connect import open_channel
        from microagent.channel.forward import PortPublisher

        try:
            conn = open_channel(control, hello_timeout=10.0)
            for spec in specs:
                fd, _, port = spec.partition(":")
                listener = socket.socket(fileno=int(fd))
                PortPublisher(conn, int(port), listener=listener)
                log(f"publishing {listener.getsockname()} -> guest port {port}")
        except Exception as exc:  # noqa: BLE001 - logged; the supervisor sees no listener
            log(f"cannot start publishers: {exc}")

    threading.Thread(target=run, daemon=True, name="publish").start()


def serve_guest(guest: socket.socket, listen: str, deadline: float, *, transport: str,
                after_ready: Callable[[str], None] | None = None, vm_events: str | None = None,
                generation: int | None = None, reconnect: Callable[[], socket.socket] | None = None,
                serial_cap: tuple[str, int] | None = None) -> int:
    """HELLO the guest, open the control endpoint, route until the guest goes away.

    Shared by this module's ``main`` and the Hyper-V helper.  The endpoint is
    ``listen`` (a Unix socket) or, with ``transport="tcp"``, the
    ``control.json`` beside it; ``after_ready`` gets it once clients can connect.
    ``reconnect``: a new guest connection, for a guest that drops the first during
    HELLO (a Firecracker guest resetting its vsock connections after a snapshot).

    :returns: the process exit status (4: the guest never answered HELLO).
    """
    while True:
        router = Router(guest, _socket.socket())  # placeholder until the handshake succeeds
        try:
            router.handshake(max(0.1, deadline - time.monotonic()), generation)
            break
        except (ConnectionResetError, BrokenPipeError, GuestClosed) as exc:
            router.guest.sock.close()
            router.listener.close()
            if reconnect is None or time.monotonic() >= deadline:
                log(f"guest did not answer HELLO: {exc}")
                return 4
            log(f"guest dropped the channel during HELLO ({exc}); connecting again")
            try:
                guest = reconnect()
            except Exception as again:  # noqa: BLE001 - report and exit: the supervisor reads our status
                log(f"guest did not answer HELLO: {exc}; reconnecting failed: {again}")
                return 4
        except (OSError, ConnectionError) as exc:
            log(f"guest did not answer HELLO: {exc}")
            return 4
    endpoint = os.path.abspath(listen)
    router.listener.close()
    if transport == "tcp":
        router.listener, router.token = bind_tcp_control(endpoint)
        endpoint = os.path.join(os.path.dirname(endpoint), "control.json")
    else:
        router.listener = bind_listener(endpoint)
    router.listener.setblocking(False)
    if vm_events:
        router.vm_events = watch_vm_events(vm_events)
    router.load_exec_count(os.path.join(os.path.dirname(endpoint), EXEC_COUNT_FILE))
    router.serial_cap = serial_cap
    log(f"ready: {endpoint}")
    if after_ready is not None:
        after_ready(endpoint)
    try:
        router.serve()
    finally:
        try:
            os.unlink(endpoint)
        except FileNotFoundError:
            pass
        router.close()
    return 0


class Options:
    """The helper's command line (argparse would cost each helper about 1 MiB)."""

    guest = listen = ""
    hello_timeout = 60.0
    transport = "unix" if hasattr(_socket, "AF_UNIX") else "tcp"
    vm_events: str | None = None
    generation: int | None = None
    reconnect_during_hello = False
    serial_log: str | None = None
    serial_log_max_bytes: int | None = None

    def __init__(self) -> None:
        self.publish: list[str] = []


USAGE = """usage: microagent-router --guest SPEC --listen PATH [options]
  --guest SPEC              unix:PATH (QEMU chardev) or fc-vsock:UDS:PORT (Firecracker)
  --listen PATH             the control socket
  --hello-timeout SECONDS   how long the guest has to answer HELLO (60)
  --transport unix|tcp      the control endpoint: a Unix socket, or token-protected
                            loopback TCP (control.json)
  --publish FD:GUESTPORT    an inherited listening TCP socket bridged to a guest port (repeatable)
  --vm-events QMP_SOCKET    a QMP monitor to follow the VM's pauses on (QEMU)
  --generation N            the restore generation to hand guest init in HELLO
  --reconnect-during-hello  connect again when the guest drops the channel during HELLO
                            (Firecracker resets vsock connections around snapshots)
  --serial-log PATH         the guest console log to keep under the cap
  --serial-log-max-bytes N  that cap
"""


def parse_args(argv: list[str]) -> Options:
    """:raises SystemExit: (2) for a bad command line, with the usage on stderr."""
    def fail(message: str) -> SystemExit:
        sys.stderr.write(f"{USAGE}microagent-router: error: {message}\n")
        return SystemExit(2)

    opts, todo = Options(), list(argv)
    while todo:
        flag = todo.pop(0)
        if flag in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if flag == "--reconnect-during-hello":
            opts.reconnect_during_hello = True
            continue
        if flag not in ("--guest", "--listen", "--hello-timeout", "--transport", "--publish", "--vm-events",
                        "--generation", "--serial-log", "--serial-log-max-bytes"):
            raise fail(f"unrecognized argument: {flag}")
        if not todo:
            raise fail(f"{flag} needs a value")
        value = todo.pop(0)
        try:
            if flag == "--publish":
                opts.publish.append(value)
            elif flag == "--hello-timeout":
                opts.hello_timeout = float(value)
            elif flag in ("--generation", "--serial-log-max-bytes"):
                setattr(opts, flag[2:].replace("-", "_"), int(value))
            elif flag == "--transport" and value not in ("unix", "tcp"):
                raise fail(f"--transport must be unix or tcp, not {value!r}")
            else:
                setattr(opts, flag[2:].replace("-", "_"), value)
        except ValueError:
            raise fail(f"{flag}: not a number: {value!r}") from None
    for required in ("guest", "listen"):
        if not getattr(opts, required):
            raise fail(f"--{required} is required")
    return opts


def main(argv: list[str] | None = None, on_ready: Callable[[str], None] | None = None) -> int:
    """The helper process; ``on_ready`` gets the control endpoint once clients can connect
    (the egress proxy's entry point, :mod:`microagent.egress.helper`, serves from there)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    restrict_umask()  # our sockets and logs are the user's alone
    if args.serial_log:
        from microagent.serial_log import cap_bytes

        serial_cap = (os.path.abspath(args.serial_log), args.serial_log_max_bytes or cap_bytes())
    else:
        serial_cap = None
    _signal.signal(_signal.SIGTERM, lambda *_: sys.exit(0))
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
    deadline = time.monotonic() + args.hello_timeout
    try:
        guest = connect_guest(args.guest, deadline)
    except Exception as exc:  # noqa: BLE001 - report and exit: the supervisor reads our status
        log(f"cannot connect to the guest: {exc}")
        return 3

    def after_ready(endpoint: str) -> None:
        if args.publish:
            start_publishers(endpoint, args.publish)
        if on_ready is not None:
            on_ready(endpoint)

    return serve_guest(guest, args.listen, deadline, transport=args.transport, after_ready=after_ready,
                       vm_events=args.vm_events, generation=args.generation, serial_cap=serial_cap,
                       reconnect=(lambda: connect_guest(args.guest, deadline)) if args.reconnect_during_hello
                       else None)

if __name__ == "__main__":
    sys.exit(main())
