"""Session multiplexing over one channel stream (docs/protocol.md).

This module owns the connection state: the ``HELLO`` handshake, session-id
allocation, routing of guest frames to sessions, and flow control in both
directions. Session kinds (exec, files, forward, shell) are clients built on
the :class:`Session` primitives in their own modules, which take a
connection (``exec.run(conn, request)``, ``files.put(conn, ...)``); this one
knows nothing of their payloads beyond the frame types and never imports
them. The one exception is ``shutdown``, a connection-wide command with no
payload of its own.

Threading model: one background reader thread per connection decodes frames
and appends events to per-session queues (bounded by the flow-control window,
so the reader never blocks on a slow consumer). Any thread may open sessions,
send on them and consume their events. When the stream ends or fails, every
waiter (handshake, :meth:`Session.recv`, credit waits) is woken with
:class:`ChannelClosed`; nothing hangs.
"""

from __future__ import annotations

import collections
import enum
import itertools
import threading
import time
from collections import namedtuple

from microagent.channel.errors import (
    ChannelTimeout,
    ProtocolError,
    SessionEnded,
    VersionMismatch,
    guest_error,
)
from microagent.channel.frames import (
    INITIAL_WINDOW,
    MAX_DATA_CHUNK,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    OversizedFrame,
    decode_data,
    decode_json,
    decode_window,
    encode_data,
    encode_frame,
    encode_window,
    frame_type_name,
    json_frame,
)
from microagent.channel.limits import MAX_QUEUED_CONTROL_BYTES, MAX_QUEUED_CONTROLS
from microagent.errors import ChannelClosed, InvalidRequest, PolicyDenied

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs CLI start-up time; mypy reads this block
    from typing import Any

    from microagent.channel.stream import ByteStream

__all__ = [
    "ChannelConnection",
    "ControlEvent",
    "DataEvent",
    "ErrorEvent",
    "ExitEvent",
    "Session",
    "SessionEvent",
    "SessionState",
]



def _log() -> Any:
    """The module's logger; :mod:`logging` loads only when there is something to log (CLI start-up)."""
    import logging

    return logging.getLogger(__name__)

_READ_SIZE = 256 << 10
_GRANT_THRESHOLD = INITIAL_WINDOW // 2
_STREAMS = (0, 1, 2)
_GUEST_STREAMS = (1, 2)  # the guest sends DATA on stdout and stderr only
_MAX_LOGGED_OOB = 20  # session-0 chatter lines logged per connection (a guest can send endless ones)


# Events are named tuples: immutable like frozen dataclasses, and cheaper to
# define (every CLI exec imports this module); collections.namedtuple, as
# typing.NamedTuple would import typing.
class DataEvent(namedtuple("DataEvent", "stream data")):
    """DATA on ``stream``; ``data == b""`` is the end of that stream."""

    __slots__ = ()
    stream: int
    data: bytes

    @property
    def eof(self) -> bool:
        """True for the empty DATA that ends a stream."""
        return not self.data


class ControlEvent(namedtuple("ControlEvent", "body size", defaults=(0,))):
    """A CONTROL frame's JSON object (``size``: its payload length, for queue bounds)."""

    __slots__ = ()
    body: dict[str, Any]
    size: int


class ExitEvent(namedtuple("ExitEvent", "body")):
    """The EXIT frame that ended the session."""

    __slots__ = ()
    body: dict[str, Any]


class ErrorEvent(namedtuple("ErrorEvent", "code message body local", defaults=(False,))):
    """The ERROR that ended the session.

    :param local: True when the host ended the session itself because the
        guest broke the protocol on it (the guest was sent the same ERROR).
    """

    __slots__ = ()
    code: str
    message: str
    body: dict[str, Any]  # the ERROR frame's object
    local: bool

    def to_exception(self) -> Exception:
        """The exception this event stands for."""
        if self.local:
            return ProtocolError(f"guest broke the protocol ({self.code}): {self.message}")
        return guest_error(self.code, self.message)


SessionEvent = DataEvent | ControlEvent | ExitEvent | ErrorEvent


class SessionState(enum.Enum):
    """Where a :class:`Session` is in its life.

    ``OPEN`` → ``GUEST_ENDED`` → ``FINISHED`` when the guest ends it;
    ``CLOSED`` from any state when the host closes it; ``OPEN`` →
    ``FAILED`` when the channel goes away under it. Only ``OPEN`` sends.
    """

    OPEN = "open"
    GUEST_ENDED = "guest_ended"  # EXIT/ERROR queued (or a local protocol error), not yet consumed
    FINISHED = "finished"  # the final EXIT/ERROR was returned by recv
    CLOSED = "closed"  # the host sent CLOSE (or abandoned a session that had ended)
    FAILED = "failed"  # the channel went away while the session was open


_GUEST_DONE = frozenset({SessionState.GUEST_ENDED, SessionState.FINISHED})
_ENDED = _GUEST_DONE | {SessionState.CLOSED}  # nothing more may be sent


class Session:
    """One session on a :class:`ChannelConnection`.

    Created by :meth:`ChannelConnection.open_session`. Events come out of
    :meth:`recv` in arrival order; consuming a :class:`DataEvent` grants the
    guest credit back. Sends wait for credit. Use as a context manager to
    ``CLOSE`` an unfinished session on exit.
    """

    def __init__(self, conn: ChannelConnection, session_id: int, kind: str) -> None:
        self.conn = conn
        self.id = session_id
        self.kind = kind
        self._cond = threading.Condition(threading.Lock())
        self._events: collections.deque[SessionEvent] = collections.deque()
        self._send_credit = dict.fromkeys(_STREAMS, INITIAL_WINDOW)
        self._recv_used = dict.fromkeys(_STREAMS, 0)  # received minus granted back
        self._consumed = dict.fromkeys(_STREAMS, 0)  # consumed, not yet granted
        self._guest_eof: set[int] = set()  # streams the guest ended
        self._control_count = 0  # queued, unconsumed CONTROL events
        self._control_bytes = 0
        self._state = SessionState.OPEN
        self._failure: ChannelClosed | None = None  # why, in state FAILED

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.kind}>"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state(self) -> SessionState:
        """Where the session is in its life."""
        with self._cond:
            return self._state

    @property
    def ended(self) -> bool:
        """True once the guest ended the session or the host closed it."""
        with self._cond:
            return self._state in _ENDED

    # ----------------------------------------------------------- receiving

    def recv(self, timeout: float | None = None) -> SessionEvent:
        """Return the next event, waiting up to ``timeout`` seconds.

        :raises ChannelTimeout: if nothing arrived in time.
        :raises SessionEnded: after the final EXIT/ERROR was returned or the
            host closed the session.
        :raises ChannelClosed: if the channel went away first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        grant: tuple[int, int] | None = None
        with self._cond:
            while not self._events:
                if self._state in (SessionState.FINISHED, SessionState.CLOSED):
                    raise SessionEnded(f"session {self.id} ({self.kind}) has ended")
                if self._failure is not None:  # state FAILED
                    raise ChannelClosed(self._failure.message, self._failure.remediation)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ChannelTimeout(f"no event on session {self.id} ({self.kind}) within {timeout} s")
                self._cond.wait(remaining)
            event = self._events.popleft()
            if isinstance(event, (ExitEvent, ErrorEvent)):
                if self._state is SessionState.GUEST_ENDED:
                    self._state = SessionState.FINISHED
            elif isinstance(event, ControlEvent):
                self._control_count -= 1
                self._control_bytes -= event.size
            elif isinstance(event, DataEvent) and event.data and event.stream in self._consumed:
                self._consumed[event.stream] += len(event.data)
                if self._consumed[event.stream] >= _GRANT_THRESHOLD and self._state is SessionState.OPEN:
                    n = self._consumed[event.stream]
                    self._consumed[event.stream] = 0
                    self._recv_used[event.stream] -= n
                    grant = (event.stream, n)
        if grant is not None:
            try:
                self.conn._send(encode_frame(self.id, FrameType.WINDOW, encode_window(*grant)))
            except ChannelClosed:
                pass  # the next recv reports it
        return event

    def wait_final(self, timeout: float | None = None) -> ExitEvent:
        """Consume events until the session ends; return its EXIT.

        Data and control events are discarded.

        :raises GuestError: if the session ended with an ERROR.
        :raises ChannelTimeout: if it did not end within ``timeout`` seconds.
        :raises ChannelClosed: if the channel went away first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = self.recv(remaining)
            if isinstance(event, ExitEvent):
                return event
            if isinstance(event, ErrorEvent):
                raise event.to_exception()

    # ------------------------------------------------------------- sending

    def send_data(self, stream: int, data: bytes, timeout: float | None = None) -> None:
        """Send ``data`` on ``stream``, in chunks, waiting for credit.

        Empty ``data`` sends nothing (use :meth:`send_eof`).

        :raises SessionEnded: if the session ends before all data is sent.
        :raises ChannelTimeout: if no credit arrived within ``timeout``
            seconds (the wait restarts after every chunk sent).
        :raises ChannelClosed: if the channel went away.
        """
        view = memoryview(data).cast("B")
        while view:
            deadline = None if timeout is None else time.monotonic() + timeout
            with self._cond:
                while True:
                    self._check_sendable()
                    if self._send_credit[stream] > 0:
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise ChannelTimeout(f"no flow-control credit on session {self.id} within {timeout} s")
                    self._cond.wait(remaining)
                n = min(self._send_credit[stream], MAX_DATA_CHUNK, len(view))
                self._send_credit[stream] -= n
            self.conn._send(encode_frame(self.id, FrameType.DATA, encode_data(stream, bytes(view[:n]))))
            view = view[n:]

    def send_eof(self, stream: int = 0) -> None:
        """Send the empty DATA that ends ``stream`` (costs no credit).

        :raises SessionEnded: if the session already ended.
        :raises ChannelClosed: if the channel went away.
        """
        with self._cond:
            self._check_sendable()
        self.conn._send(encode_frame(self.id, FrameType.DATA, encode_data(stream)))

    def send_control(self, body: dict[str, Any]) -> None:
        """Send a CONTROL frame with ``body`` as JSON.

        :raises SessionEnded: if the session already ended.
        :raises ChannelClosed: if the channel went away.
        """
        with self._cond:
            self._check_sendable()
        self.conn._send(json_frame(self.id, FrameType.CONTROL, body))

    def send_credit(self, stream: int) -> int:
        """Bytes that may be sent on ``stream`` right now without waiting."""
        with self._cond:
            return self._send_credit[stream]

    def close(self) -> None:
        """Abandon the session: send CLOSE unless it already ended. Idempotent."""
        with self._cond:
            was = self._state
            self._state = SessionState.CLOSED
            self._cond.notify_all()
            if was in _ENDED:
                return
        self.conn._forget(self.id)
        try:
            self.conn._send(encode_frame(self.id, FrameType.CLOSE))
        except ChannelClosed:
            pass

    def _check_sendable(self) -> None:
        if self._state in _ENDED:
            raise SessionEnded(f"session {self.id} ({self.kind}) has ended")
        if self._failure is not None:
            raise ChannelClosed(self._failure.message, self._failure.remediation)

    # ---------------------------------------------- called by the reader

    def _deliver(self, event: SessionEvent) -> None:
        with self._cond:
            if self._state in _GUEST_DONE:
                return
            if self._state is SessionState.CLOSED:
                self._cond.notify_all()
                return
            if isinstance(event, (ExitEvent, ErrorEvent)):
                self._state = SessionState.GUEST_ENDED
            self._events.append(event)
            self._cond.notify_all()

    def _on_data(self, stream: int, data: bytes) -> tuple[str, str] | None:
        """Queue received DATA; ``(code, message)`` if it broke the protocol.

        Every way of growing the queue is bounded: data by the credit we
        granted, EOF to once per stream, and only on the guest's streams.
        """
        with self._cond:
            if self._state in _GUEST_DONE:
                return None
            if stream not in _GUEST_STREAMS:
                return "bad_request", f"DATA on stream {stream}, which the guest does not send on"
            if stream in self._guest_eof:
                return "bad_request", f"DATA on stream {stream} after its end"
            if data:
                self._recv_used[stream] += len(data)
                if self._recv_used[stream] > INITIAL_WINDOW:
                    return "flow_control", f"guest overran the credit on stream {stream}"
            else:
                self._guest_eof.add(stream)
            if self._state is not SessionState.CLOSED:
                self._events.append(DataEvent(stream, data))
            self._cond.notify_all()
            return None

    def _on_control(self, event: ControlEvent) -> tuple[str, str] | None:
        """Queue a CONTROL event; ``(code, message)`` if too many are unconsumed."""
        with self._cond:
            if self._state in _ENDED:
                return None
            if (self._control_count >= MAX_QUEUED_CONTROLS
                    or self._control_bytes + event.size > MAX_QUEUED_CONTROL_BYTES):
                return "flow_control", (f"more than {MAX_QUEUED_CONTROLS} CONTROL frames or "
                                        f"{MAX_QUEUED_CONTROL_BYTES} bytes of them unconsumed")
            self._control_count += 1
            self._control_bytes += event.size
            self._events.append(event)
            self._cond.notify_all()
            return None

    def _on_window(self, stream: int, increment: int) -> None:
        with self._cond:
            if stream in self._send_credit:
                self._send_credit[stream] += increment
            self._cond.notify_all()

    def _fail(self, exc: ChannelClosed) -> None:
        with self._cond:
            if self._state is SessionState.OPEN:
                self._state = SessionState.FAILED
                self._failure = exc
            self._cond.notify_all()


class ChannelConnection:
    """The host end of one guest channel.

    :param stream: the transport; the connection owns and closes it.
    :param name: label for log lines and errors (e.g. the workspace name).

    Typical use::

        conn = ChannelConnection.open(connect_unix(path))
        result = exec.run(conn, ExecRequest(["uname", "-a"]))  # microagent.channel.exec
        conn.close()
    """

    def __init__(self, stream: ByteStream, *, name: str = "guest") -> None:
        self.name = name
        self._stream = stream
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._closed_exc: ChannelClosed | None = None
        self._hello_cond = threading.Condition(self._lock)
        self._hello_reply: dict[str, Any] | None = None
        self._hello_error: Exception | None = None
        self._hello_pending = False
        self._oob_logged = 0
        self._guest_closed = ""  # the helper's word that the guest went away
        self.guest_hello: dict[str, Any] | None = None
        """The guest's ``HELLO`` object once the handshake succeeded."""
        self._reader = threading.Thread(target=self._read_loop, name=f"microagent-channel-{name}", daemon=True)
        self._started = False

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, stream: ByteStream, *, name: str = "guest", hello_timeout: float = 10.0,
             hello_fields: dict[str, Any] | None = None) -> ChannelConnection:
        """Start a connection on ``stream`` and perform the handshake.

        :raises VersionMismatch: if the guest speaks another version.
        :raises ChannelTimeout: if the guest did not answer ``HELLO`` in time.
        :raises ChannelClosed: if the stream ended first.
        """
        conn = cls(stream, name=name)
        try:
            conn.start()
            conn.handshake(hello_timeout, hello_fields)
        except BaseException:
            conn.close()
            raise
        return conn

    def __enter__(self) -> ChannelConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the background reader thread (once)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self._reader.start()

    def handshake(self, timeout: float = 10.0, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send ``HELLO`` (plus ``extra`` fields, e.g. a helper's token) and wait for the guest's.

        A handshake on a live connection resets it (the guest kills every
        session), so every open local session is failed with
        :class:`ChannelClosed`.

        :raises VersionMismatch: if the guest answers ``version_mismatch`` or
            a ``HELLO`` for another protocol or version.
        :raises ProtocolError: if the guest's HELLO is not a JSON object.
        :raises ChannelTimeout: if there is no answer within ``timeout`` seconds.
        :raises ChannelClosed: if the stream ends first.
        """
        self.start()
        with self._lock:
            stale = list(self._sessions.values())
            self._sessions.clear()
            self._hello_pending = True
            self._hello_reply = None
            self._hello_error = None
        for s in stale:
            s._fail(ChannelClosed(f"session {s.id} was reset by a new HELLO"))
        self._send(
            json_frame(0, FrameType.HELLO, {**(extra or {}), "protocol": PROTOCOL_NAME,
                                            "version": PROTOCOL_VERSION, "role": "host"})
        )
        deadline = time.monotonic() + timeout
        with self._hello_cond:
            while self._hello_reply is None and self._hello_error is None:
                if self._closed_exc is not None:
                    self._hello_pending = False
                    raise ChannelClosed(
                        f"channel to {self.name} closed before the guest answered HELLO",
                        "check the guest console log for 'microagent-init: channel ready'",
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._hello_pending = False
                    raise ChannelTimeout(
                        f"{self.name} did not answer HELLO within {timeout} s",
                        "check that microagent-init is running in the guest (serial log)",
                    )
                self._hello_cond.wait(remaining)
            self._hello_pending = False
            if self._hello_error is not None:
                raise self._hello_error
            reply = self._hello_reply
            assert reply is not None
            self.guest_hello = reply
            return reply

    @property
    def features(self) -> frozenset[str]:
        """The ``features`` the guest announced in ``HELLO``."""
        hello = self.guest_hello or {}
        feats = hello.get("features") or []
        return frozenset(str(f) for f in feats) if isinstance(feats, list) else frozenset()

    @property
    def closed(self) -> bool:
        """True once the stream ended, failed or was closed."""
        with self._lock:
            return self._closed_exc is not None

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait for the stream to end; True if it did within ``timeout``."""
        if not self._started:
            return self.closed
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def close(self) -> None:
        """Close the stream and fail every pending waiter. Idempotent.

        Waits briefly for the reader thread (a socket stream wakes it at once;
        a pipe read may stay blocked, the thread is a daemon).
        """
        self._fail_all(ChannelClosed(f"channel to {self.name} was closed by the host"))
        self._stream.close()
        if self._started and threading.current_thread() is not self._reader:
            self._reader.join(2)

    # ------------------------------------------------------------- sessions

    def open_session(self, kind: str, **fields: Any) -> Session:
        """Allocate a session id, send ``OPEN {kind, **fields}``, return the session.

        :raises ChannelClosed: if the channel is closed.
        :raises ProtocolError: if ``fields`` do not encode.
        """
        body = {"kind": kind, **fields}
        with self._lock:
            if self._closed_exc is not None:
                raise ChannelClosed(self._closed_exc.message, self._closed_exc.remediation)
            sid = next(self._ids)
            session = Session(self, sid, kind)
            self._sessions[sid] = session
        try:
            self._send(json_frame(sid, FrameType.OPEN, body))
        except BaseException:
            self._forget(sid)
            raise
        return session

    def session_count(self) -> int:
        """Number of sessions not yet ended."""
        with self._lock:
            return len(self._sessions)

    # ------------------------------------------------------- guest power

    def shutdown(self, action: str = "poweroff", grace_s: float = 5, *, signal: int = 15,
                 timeout: float | None = 10.0) -> None:
        """Ask the guest to power off (or reboot); returns once it acknowledged.

        The guest answers ``EXIT {"status":"ok"}`` at once and then goes
        down; the channel ends shortly after.

        :param action: ``"poweroff"`` or ``"reboot"``.
        :param grace_s: seconds between ``signal`` and SIGKILL in the guest.
        :param signal: what every process gets first (the image's StopSignal; default SIGTERM).
        :raises InvalidRequest: for another ``action``.
        :raises GuestError: if the guest refused.
        :raises ChannelTimeout: if there was no answer in ``timeout`` seconds.
        :raises ChannelClosed: if the channel went away first.
        """
        if action not in ("poweroff", "reboot"):
            raise InvalidRequest(f"unknown shutdown action {action!r}", "use 'poweroff' or 'reboot'")
        with self.open_session("shutdown", action=action, grace_ms=int(grace_s * 1000),
                               signal=signal) as session:
            session.wait_final(timeout)

    # ------------------------------------------------------------ internals

    def _send(self, frame: bytes) -> None:
        with self._lock:
            if self._closed_exc is not None:
                raise ChannelClosed(self._closed_exc.message, self._closed_exc.remediation)
        try:
            with self._write_lock:
                self._stream.write(frame)
        except ChannelClosed as exc:
            self._fail_all(exc)
            self._stream.close()
            raise

    def _forget(self, sid: int) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def _fail_all(self, exc: ChannelClosed) -> None:
        with self._lock:
            if self._closed_exc is not None:
                return
            self._closed_exc = exc
            sessions = list(self._sessions.values())
            self._sessions.clear()
            self._hello_cond.notify_all()
        for s in sessions:
            s._fail(exc)

    def _read_loop(self) -> None:
        decoder = FrameDecoder()
        # A helper says "guest_closed" before it hangs up because the guest went away;
        # an end without it is the helper itself dying (the guest may be fine).
        reason = (f"the channel helper of {self.name} died (the guest may still be running); "
                  "the next command starts a new helper")
        try:
            while True:
                chunk = self._stream.read(_READ_SIZE)
                if not chunk:
                    break
                for event in decoder.feed(chunk):
                    if isinstance(event, OversizedFrame):
                        self._on_oversized(event)
                    else:
                        self._dispatch(event)
        except ChannelClosed as exc:
            reason = exc.message
        except Exception as exc:  # a bug here must not leave waiters hanging
            _log().exception("channel reader for %s failed", self.name)
            reason = f"channel reader for {self.name} failed: {exc!r}"
        finally:
            if self._guest_closed:
                reason = f"channel to {self.name} ended: {self._guest_closed}"
            self._fail_all(ChannelClosed(reason, "check the workspace with 'microagent status'; "
                                                 "reconnect to continue"))
            self._stream.close()

    def _log_oob(self, fmt: str, *args: Any) -> None:
        """Log session-0 chatter, a bounded number of times per connection."""
        self._oob_logged += 1
        if self._oob_logged <= _MAX_LOGGED_OOB:
            _log().warning("%s: " + fmt, self.name, *args)
        elif self._oob_logged == _MAX_LOGGED_OOB + 1:
            _log().warning("%s: further unexpected session-0 frames are not logged", self.name)

    def _answer_error(self, sid: int, code: str, message: str) -> None:
        """Send ERROR from a helper thread: the reader must never block on a write.

        (A guest whose output queue is full stops reading the channel until
        the host reads; a reader blocked in a write would deadlock with it.)
        """

        def send() -> None:
            try:
                self._send(json_frame(sid, FrameType.ERROR, {"code": code, "message": message}))
            except ChannelClosed:
                pass

        threading.Thread(target=send, name=f"microagent-channel-error-{sid}", daemon=True).start()

    def _end_locally(self, sid: int, code: str, message: str) -> None:
        """The guest broke the protocol on ``sid``: answer ERROR, end it."""
        with self._lock:
            session = self._sessions.pop(sid, None)
        if session is None:
            return  # not ours (or already ended): nothing to answer, nothing to log
        _log().warning("%s session %d: %s (%s)", self.name, sid, message, code)
        if sid != 0:
            self._answer_error(sid, code, message)
        if session is not None:
            session._deliver(ErrorEvent(code, message, {"code": code, "message": message}, local=True))

    def _on_oversized(self, event: OversizedFrame) -> None:
        self._end_locally(event.session, "frame_too_large", f"frame of {event.length} bytes exceeds 1 MiB")

    def _dispatch(self, frame: Frame) -> None:
        if frame.session == 0:
            self._dispatch_connection(frame)
            return
        with self._lock:
            session = self._sessions.get(frame.session)
        if session is None:
            # Late frames for a session we closed or never opened; the
            # guest sends nothing after CLOSE but some may be in flight.
            return
        ftype = frame.known_type
        try:
            problem: tuple[str, str] | None = None
            if ftype == FrameType.DATA:
                problem = session._on_data(*decode_data(frame.payload))
            elif ftype == FrameType.WINDOW:
                stream, inc = decode_window(frame.payload)
                session._on_window(stream, inc)
            elif ftype == FrameType.CONTROL:
                problem = session._on_control(ControlEvent(decode_json(frame.payload), len(frame.payload)))
            elif ftype == FrameType.EXIT:
                body = decode_json(frame.payload)
                self._forget(frame.session)
                session._deliver(ExitEvent(body))
            elif ftype == FrameType.ERROR:
                body = decode_json(frame.payload)
                self._forget(frame.session)
                session._deliver(ErrorEvent(str(body.get("code", "")), str(body.get("message", "")), body))
            else:
                problem = "unknown_frame", f"unexpected frame type {frame.type} from guest"
            if problem is not None:
                self._end_locally(frame.session, *problem)
        except ProtocolError as exc:
            self._end_locally(frame.session, "bad_request", exc.message)

    def _dispatch_connection(self, frame: Frame) -> None:
        ftype = frame.known_type
        if ftype == FrameType.ERROR and b"guest_closed" in frame.payload:
            try:
                body = decode_json(frame.payload)
            except ProtocolError:
                body = {}
            if body.get("code") == "guest_closed":
                self._guest_closed = str(body.get("message") or "the guest went away")
                return
        if ftype not in (FrameType.HELLO, FrameType.ERROR):
            self._log_oob("ignoring frame type %d on session 0", frame.type)
            return
        try:
            body = decode_json(frame.payload)
        except ProtocolError as exc:
            body = {}
            err: Exception | None = ProtocolError(
                f"guest sent a malformed {frame_type_name(frame.type)} on session 0: {exc.message}")
        else:
            err = None
        with self._hello_cond:
            if not self._hello_pending:
                self._log_oob("unexpected %s on session 0: %.200r", frame_type_name(frame.type), body)
                return
            if err is None and ftype == FrameType.ERROR:
                code = str(body.get("code", ""))
                msg = str(body.get("message", ""))
                if code == "policy_denied":  # a helper refused our token
                    err = PolicyDenied(f"{self.name} refused the connection: {msg}",
                                       "read the token from the helper's current control.json")
                elif code != "version_mismatch":
                    # Not an answer to HELLO (the guest answers HELLO with
                    # HELLO or version_mismatch): a late reply to something
                    # earlier on session 0. Keep waiting.
                    _log().warning("%s: ERROR %s on session 0 during HELLO: %s", self.name, code, msg)
                    return
                else:
                    err = VersionMismatch(
                        f"{self.name} rejected protocol version {PROTOCOL_VERSION}: {msg}",
                        "install matching versions of microagent and its guest image",
                    )
            elif err is None:
                if body.get("protocol") != PROTOCOL_NAME or body.get("version") != PROTOCOL_VERSION:
                    err = VersionMismatch(
                        f"{self.name} speaks {body.get('protocol')!r} version {body.get('version')!r}, "
                        f"expected {PROTOCOL_NAME!r} version {PROTOCOL_VERSION}",
                        "install matching versions of microagent and its guest image",
                    )
            if err is not None:
                self._hello_error = err
            else:
                self._hello_reply = body
            self._hello_cond.notify_all()
