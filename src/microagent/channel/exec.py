"""The ``exec`` session kind (docs/protocol.md, "exec").

This module owns :class:`ExecRequest` / :class:`ExecResult` and the running
command handle :class:`ExecSession`: collecting or streaming output, feeding
stdin from bytes or a file object, and pty resize and signals. Framing,
credit and routing stay in :mod:`~microagent.channel.mux`.

Each :class:`ExecSession` runs one pump thread that consumes the session's
events (so output flows as it arrives and credit is granted as it is
written out) and, when stdin is bytes or a file, one feeder thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from microagent.channel.errors import ChannelTimeout, SessionEnded
from microagent.channel.frames import STDERR, STDIN, STDOUT
from microagent.channel.limits import EXIT_GRACE_S, START_TIMEOUT_S
from microagent.channel.mux import ChannelConnection, ControlEvent, DataEvent, ErrorEvent, ExitEvent, Session
from microagent.errors import ChannelClosed, InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs CLI start-up time; mypy reads this block
    from collections.abc import Callable, Sequence
    from typing import IO, Any, Protocol, TypeAlias

    class SupportsWrite(Protocol):
        """A binary file-like object output can be written to."""

        def write(self, data: bytes, /) -> Any: ...

    OutputSink: TypeAlias = Callable[[bytes], object] | SupportsWrite
    StdinSource: TypeAlias = bytes | bytearray | memoryview | IO[bytes] | bool | None

__all__ = [
    "ExecRequest",
    "ExecResult",
    "ExecSession",
    "OutputSink",
    "SupportsWrite",
    "ms_to_rfc3339",
    "run",
    "start",
]


def __getattr__(name: str) -> object:
    """The typing-only names, built on first use (typing costs the CLI's start-up).

    - ``SupportsWrite``: a binary file-like object output can be written to.
    - ``OutputSink``: where streamed output goes: a callback or a writable binary file.
    - ``StdinSource``: ``None``/``False``: /dev/null. bytes: sent then EOF. A
      binary file: read and sent from a thread until its EOF. ``True``: open;
      the caller writes with :meth:`ExecSession.write` and ends with
      :meth:`ExecSession.close_stdin`.
    """
    if name not in ("SupportsWrite", "OutputSink", "StdinSource"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from collections.abc import Callable
    from typing import IO, Protocol

    class SupportsWrite(Protocol):
        """A binary file-like object output can be written to."""

        def write(self, data: bytes, /) -> object: ...

    SupportsWrite.__qualname__ = "SupportsWrite"

    names = {"SupportsWrite": SupportsWrite, "OutputSink": Callable[[bytes], object] | SupportsWrite,
             "StdinSource": bytes | bytearray | memoryview | IO[bytes] | bool | None}
    globals().update(names)
    return names[name]


class _Record:
    """Plain classes with slots rather than dataclasses: every CLI exec builds
    these, and dataclasses (with inspect) would double its start-up time.
    Subclasses list their fields and defaults in ``_FIELDS``; this gives the
    keyword constructor, equality, repr and :meth:`replace`."""

    __slots__ = ()
    _FIELDS: tuple[tuple[str, object], ...] = ()
    _REQUIRED = object()
    _HIDDEN: frozenset[str] = frozenset()  # left out of repr

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(self._FIELDS):
            raise TypeError(f"{type(self).__name__}() takes at most {len(self._FIELDS)} positional arguments")
        for (name, default), value in zip(self._FIELDS, args):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}() got multiple values for argument {name!r}")
            kwargs[name] = value
        for name, default in self._FIELDS:
            if name in kwargs:
                value = kwargs.pop(name)
            elif default is _Record._REQUIRED:
                raise TypeError(f"{type(self).__name__}() missing required argument {name!r}")
            else:
                value = default() if callable(default) else default  # a callable default is a factory
            setattr(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {next(iter(kwargs))!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name, _ in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass with eq

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name, _ in self._FIELDS if name not in self._HIDDEN)
        return f"{type(self).__name__}({shown})"

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (like :func:`dataclasses.replace`)."""
        return type(self)(**{**{name: getattr(self, name) for name, _ in self._FIELDS}, **changes})


class ExecRequest(_Record):
    """What to run in the guest (the ``OPEN {"kind":"exec"}`` fields).

    :param argv: program and arguments; ``argv[0]`` without ``/`` is looked
        up on the guest's ``PATH``.
    :param env: ``{"K": "V"}`` or ``["K=V", ...]`` layered over the guest's base env.
    :param cwd: working directory; ``None`` = the user's home (``/`` if missing).
    :param user: ``root``, a user name, a UID or ``"UID:GID"``; ``None`` = root.
    :param stdin: see :data:`StdinSource`.
    :param pty: run on a new pseudo-terminal (stdout and stderr merge on stream 1).
    :param term: ``TERM`` for a pty.
    :param rows: initial pty rows.
    :param cols: initial pty columns.
    :param timeout_s: guest-side timeout; ``None``/0 = none. On expiry the
        result is ``timed_out`` with exit code 124.
    :param stdout_limit: keep at most this many stdout bytes (0 = unlimited).
        Enforced by the guest and again by the host (whatever the guest
        sends past it is dropped and the result says ``stdout_truncated``),
        for collected output and sinks alike.
    :param stderr_limit: the same for stderr.
    """

    argv: Sequence[str]
    env: Mapping[str, str] | Sequence[str]
    cwd: str | None
    user: str | int | None
    stdin: StdinSource
    pty: bool
    term: str
    rows: int
    cols: int
    timeout_s: float | None
    stdout_limit: int
    stderr_limit: int
    _FIELDS = (("argv", _Record._REQUIRED), ("env", ()), ("cwd", None), ("user", None), ("stdin", None),
               ("pty", False), ("term", "xterm-256color"), ("rows", 24), ("cols", 80), ("timeout_s", None),
               ("stdout_limit", 0), ("stderr_limit", 0))
    __slots__ = tuple(name for name, _ in _FIELDS)

    def env_list(self) -> list[str]:
        """``env`` as ``K=V`` strings.

        :raises InvalidRequest: for an entry without ``=`` or an empty key.
        """
        if isinstance(self.env, Mapping):
            items = [f"{k}={v}" for k, v in self.env.items()]
        else:
            items = [str(e) for e in self.env]
        for item in items:
            if "=" not in item or item.startswith("="):
                raise InvalidRequest(f"environment entry {item!r} is not K=V")
        return items

    def to_open(self, kind: str = "exec") -> dict[str, Any]:
        """The ``OPEN`` payload fields (without ``kind``).

        :raises InvalidRequest: if ``argv`` is empty or a field is out of range.
        """
        argv = [str(a) for a in self.argv]
        if not argv and kind == "exec":
            raise InvalidRequest("exec argv is empty", "give at least the program to run")
        if self.rows < 0 or self.cols < 0 or self.stdout_limit < 0 or self.stderr_limit < 0:
            raise InvalidRequest("rows, cols and output limits must not be negative")
        if self.timeout_s is not None and self.timeout_s < 0:
            raise InvalidRequest("timeout_s must not be negative")
        body: dict[str, Any] = {
            "env": self.env_list(),
            "stdin": self.stdin is not None and self.stdin is not False,
            "pty": bool(self.pty),
            "term": self.term,
            "rows": int(self.rows),
            "cols": int(self.cols),
            "timeout_ms": int(round((self.timeout_s or 0) * 1000)),
            "stdout_limit": int(self.stdout_limit),
            "stderr_limit": int(self.stderr_limit),
        }
        if argv:
            body["argv"] = argv
        if self.cwd is not None:
            body["cwd"] = self.cwd
        if self.user is not None:
            body["user"] = str(self.user)
        return body


class ExecResult(_Record):
    """How a command ended (the ``EXIT`` payload plus collected output).

    :param status: ``exited``, ``signaled``, ``timed_out`` or ``failed_to_start``.
    :param exit_code: the exit code (128+signal when signaled, 124 timed out,
        127/126 failed to start).
    :param signal: the signal number that killed it, else 0.
    :param stdout: collected stdout (empty when streamed to a sink).
    :param stderr: collected stderr (empty when streamed, or with a pty).
    :param started_at: RFC 3339 UTC time the process started (``""`` if unknown).
    :param completed_at: RFC 3339 UTC time it ended (``""`` if unknown).
    :param error: ``{code, message}`` when ``failed_to_start``.
    :param pid: the guest pid from ``CONTROL {"started":{"pid":N}}``.
    """

    status: str
    exit_code: int
    signal: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    started_at: str
    completed_at: str
    error: dict[str, Any] | None
    pid: int | None
    raw: dict[str, Any]
    _FIELDS = (("status", _Record._REQUIRED), ("exit_code", _Record._REQUIRED), ("signal", 0), ("stdout", b""),
               ("stderr", b""), ("stdout_truncated", False), ("stderr_truncated", False), ("started_at", ""),
               ("completed_at", ""), ("error", None), ("pid", None), ("raw", dict))
    __slots__ = tuple(name for name, _ in _FIELDS)
    _HIDDEN = frozenset({"raw"})

    @property
    def ok(self) -> bool:
        """True when the command exited with code 0."""
        return self.status == "exited" and self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; output is decoded as UTF-8 with replacement."""
        out = {name: getattr(self, name) for name, _ in self._FIELDS if name != "raw"}
        if out["error"] is not None:
            out["error"] = dict(out["error"])
        out["stdout"] = self.stdout.decode("utf-8", "replace")
        out["stderr"] = self.stderr.decode("utf-8", "replace")
        return out

    @classmethod
    def from_exit(cls, body: Mapping[str, Any], stdout: bytes = b"", stderr: bytes = b"", pid: int | None = None) -> ExecResult:
        """Build a result from an ``EXIT`` payload."""
        err = body.get("error")
        return cls(
            status=str(body.get("status", "")),
            exit_code=_int(body.get("exit_code"), -1),
            signal=_int(body.get("signal"), 0),
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=bool(body.get("stdout_truncated", False)),
            stderr_truncated=bool(body.get("stderr_truncated", False)),
            started_at=ms_to_rfc3339(body.get("started_at_ms")),
            completed_at=ms_to_rfc3339(body.get("completed_at_ms")),
            error=dict(err) if isinstance(err, Mapping) else None,
            pid=pid,
            raw=dict(body),
        )


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def ms_to_rfc3339(ms: Any) -> str:
    """Milliseconds since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmmZ``; ``""`` if absent."""
    if not isinstance(ms, (int, float)) or isinstance(ms, bool) or ms <= 0:
        return ""
    try:
        t = time.gmtime(ms // 1000)  # time, not datetime: every exec's result needs this (CLI start-up)
    except (OverflowError, OSError, ValueError):
        return ""
    if t.tm_year > 9999:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S.", t) + f"{int(ms % 1000):03d}Z"


def _writer(sink: OutputSink) -> Callable[[bytes], object]:
    write = getattr(sink, "write", None)
    if write is not None:
        flush = getattr(sink, "flush", None)

        def to_file(data: bytes) -> None:
            write(data)
            if flush is not None:
                flush()

        return to_file
    if callable(sink):
        return sink
    raise InvalidRequest(f"output sink {sink!r} is neither callable nor writable")


class ExecSession:
    """A running command: stream output, feed stdin, resize, signal, wait.

    Created by :func:`start`. Output goes to the sinks as it arrives (called
    from the pump thread); streams without a sink are collected into the result.

    A silent guest cannot hang it: if the guest does not report the process
    started within ``start_timeout`` seconds, or (with a guest-side
    ``timeout_s``) does not end it within ``exit_grace`` seconds after that
    timeout, the session is closed and :meth:`wait` raises
    :class:`ChannelTimeout`. ``None`` disables either check.
    """

    def __init__(
        self,
        session: Session,
        request: ExecRequest,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        *,
        start_timeout: float | None = START_TIMEOUT_S,
        exit_grace: float | None = EXIT_GRACE_S,
    ) -> None:
        self.session = session
        self.request = request
        self._opened = time.monotonic()
        self._start_timeout = start_timeout
        self._exit_grace = exit_grace
        self._limit = {STDOUT: request.stdout_limit, STDERR: request.stderr_limit}
        self._kept = {STDOUT: 0, STDERR: 0}
        self._cut = {STDOUT: False, STDERR: False}
        self._out: dict[int, Callable[[bytes], object] | None] = {
            STDOUT: _writer(stdout) if stdout is not None else None,
            STDERR: _writer(stderr) if stderr is not None else None,
        }
        self._collected = {STDOUT: bytearray(), STDERR: bytearray()}
        self._cond = threading.Condition()
        self._pid: int | None = None
        self._result: ExecResult | None = None
        self._error: BaseException | None = None
        self._done = False
        self._stdin_closed = False
        self._pump = threading.Thread(target=self._run_pump, name=f"microagent-exec-{session.id}", daemon=True)
        self._pump.start()
        self._feeder: threading.Thread | None = None
        src = request.stdin
        if src is not None and src is not False and src is not True:
            self._feeder = threading.Thread(
                target=self._run_feeder, args=(src,), name=f"microagent-stdin-{session.id}", daemon=True
            )
            self._feeder.start()

    def __enter__(self) -> ExecSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def id(self) -> int:
        """The session id."""
        return self.session.id

    @property
    def pid(self) -> int | None:
        """The guest pid, once ``CONTROL {"started"}`` arrived."""
        with self._cond:
            return self._pid

    @property
    def done(self) -> bool:
        """True once the session ended (result or error available)."""
        with self._cond:
            return self._done

    def wait_started(self, timeout: float | None = None) -> int | None:
        """Wait until the process started (or the session ended); return its pid.

        :raises ChannelTimeout: if neither happened within ``timeout`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._pid is not None or self._done, timeout):
                raise ChannelTimeout(f"exec session {self.id} did not start within {timeout} s")
            return self._pid

    def write(self, data: bytes, timeout: float | None = None) -> None:
        """Send ``data`` to the process's stdin (waits for credit).

        :raises SessionEnded: if the command already ended.
        :raises ChannelClosed: if the channel went away.
        """
        self.session.send_data(STDIN, data, timeout)

    def close_stdin(self) -> None:
        """Send EOF on stdin; a no-op if already sent or the session ended."""
        with self._cond:
            if self._stdin_closed:
                return
            self._stdin_closed = True
        try:
            self.session.send_eof(STDIN)
        except (SessionEnded, ChannelClosed):
            pass

    def resize(self, rows: int, cols: int) -> bool:
        """Resize the pty; False if the session already ended.

        :raises ChannelClosed: if the channel went away.
        """
        try:
            self.session.send_control({"resize": {"rows": int(rows), "cols": int(cols)}})
        except SessionEnded:
            return False
        return True

    def signal(self, signum: int) -> bool:
        """Send signal ``signum`` to the process group; False if already ended.

        :raises ChannelClosed: if the channel went away.
        """
        try:
            self.session.send_control({"signal": int(signum)})
        except SessionEnded:
            return False
        return True

    def wait(self, timeout: float | None = None) -> ExecResult:
        """Wait for the command to end and return its result.

        :raises ChannelTimeout: if it did not end within ``timeout`` seconds
            (the command keeps running; call :meth:`close` to abandon it).
        :raises GuestError: if the guest rejected the session (ERROR frame).
        :raises ChannelClosed: if the channel went away first.
        :raises Exception: whatever an output sink raised (the session is
            then closed).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise ChannelTimeout(f"exec session {self.id} did not finish within {timeout} s")
            if self._error is not None:
                raise self._error
            assert self._result is not None
            return self._result

    def close(self) -> None:
        """Abandon the command (``CLOSE``: the guest kills it). Idempotent."""
        self.session.close()
        with self._cond:
            if not self._done:
                self._done = True
                self._error = SessionEnded(f"exec session {self.id} was closed by the host")
            self._cond.notify_all()

    # ------------------------------------------------------------ threads

    def _finish(self, result: ExecResult | None, error: BaseException | None) -> None:
        with self._cond:
            if not self._done:
                self._done = True
                self._result = result
                self._error = error
            self._cond.notify_all()

    def _deadline(self) -> tuple[float, str] | None:
        """When the guest must next have said something, and what it failed to say."""
        if self._pid is None and self._start_timeout is not None:
            return (self._opened + self._start_timeout,
                    f"the guest did not start exec session {self.id} within {self._start_timeout:g} s")
        if self.request.timeout_s and self._exit_grace is not None:
            limit = self.request.timeout_s + self._exit_grace
            return (self._opened + limit,
                    f"the guest did not report the end of exec session {self.id} within {limit:g} s "
                    f"(its timeout was {self.request.timeout_s:g} s)")
        return None

    def _recv(self) -> Any:
        due = self._deadline()
        if due is None:
            return self.session.recv()
        try:
            return self.session.recv(max(0.0, due[0] - time.monotonic()))
        except ChannelTimeout:
            if self._deadline() != due:  # the deadline moved on (e.g. started) in the meantime
                return self._recv()
            raise ChannelTimeout(due[1], "check the guest with 'microagent status' and 'microagent logs'") from None

    def _keep(self, stream: int, data: bytes) -> bytes:
        """The part of ``data`` within the stream's limit (the host enforces it too)."""
        limit = self._limit.get(stream, 0)
        if not limit:
            return data
        room = max(0, limit - self._kept[stream])
        if len(data) > room:
            self._cut[stream] = True
            data = data[:room]
        self._kept[stream] += len(data)
        return data

    def _run_pump(self) -> None:
        try:
            while True:
                event = self._recv()
                if isinstance(event, DataEvent):
                    data = self._keep(event.stream, event.data) if event.data else b""
                    if data:
                        out = self._out.get(event.stream)
                        if out is not None:
                            out(data)
                        elif event.stream in self._collected:
                            self._collected[event.stream] += data
                elif isinstance(event, ControlEvent):
                    started = event.body.get("started")
                    if isinstance(started, Mapping) and isinstance(started.get("pid"), int):
                        with self._cond:
                            self._pid = started["pid"]
                            self._cond.notify_all()
                elif isinstance(event, ExitEvent):
                    result = ExecResult.from_exit(
                        event.body, bytes(self._collected[STDOUT]), bytes(self._collected[STDERR]), self.pid
                    )
                    result.stdout_truncated |= self._cut[STDOUT]
                    result.stderr_truncated |= self._cut[STDERR]
                    self._finish(result, None)
                    return
                elif isinstance(event, ErrorEvent):
                    self._finish(None, event.to_exception())
                    return
        except SessionEnded as exc:
            self._finish(None, exc)
        except ChannelClosed as exc:
            self._finish(None, exc)
        except ChannelTimeout as exc:  # the guest went silent: abandon the session
            self.session.close()
            self._finish(None, exc)
        except BaseException as exc:  # a sink failed (e.g. BrokenPipeError)
            self.session.close()
            self._finish(None, exc)

    def _run_feeder(self, src: bytes | bytearray | memoryview | IO[bytes]) -> None:
        try:
            if isinstance(src, (bytes, bytearray, memoryview)):
                self.session.send_data(STDIN, bytes(src))
            else:
                read = getattr(src, "read1", None) or src.read
                while True:
                    chunk = read(32 << 10)
                    if not chunk:
                        break
                    self.session.send_data(STDIN, chunk)
            self.close_stdin()
        except (SessionEnded, ChannelClosed, OSError, ValueError):
            # The command ended without reading all input, the channel went
            # away (the pump reports that), or the source failed / was closed.
            pass


def start(
    conn: ChannelConnection,
    request: ExecRequest,
    *,
    stdout: OutputSink | None = None,
    stderr: OutputSink | None = None,
    kind: str = "exec",
    start_timeout: float | None = START_TIMEOUT_S,
    exit_grace: float | None = EXIT_GRACE_S,
) -> ExecSession:
    """Open an exec session and return its handle at once.

    :param stdout: sink for stdout (and pty output); ``None`` = collect.
    :param stderr: sink for stderr; ``None`` = collect.
    :param kind: ``exec`` or ``shell``.
    :param start_timeout: see :class:`ExecSession`.
    :param exit_grace: see :class:`ExecSession`.
    :raises InvalidRequest: if the request is malformed.
    :raises ChannelClosed: if the channel is closed.
    """
    body = request.to_open(kind)
    session = conn.open_session(kind, **body)
    return ExecSession(session, request, stdout, stderr, start_timeout=start_timeout, exit_grace=exit_grace)


def run(conn: ChannelConnection, request: ExecRequest, *, timeout: float | None = None) -> ExecResult:
    """Run a command to completion and collect its output.

    A command that cannot start is a result (``failed_to_start``), not an error.

    :param timeout: host-side limit in seconds on the whole wait (the
        guest-side limit is ``request.timeout_s``); on expiry the session is
        closed (the guest kills the command).
    :raises InvalidRequest: if the request is malformed.
    :raises GuestError: if the guest rejected the session.
    :raises ChannelTimeout: if ``timeout`` ran out.
    :raises ChannelClosed: if the channel went away.
    """
    handle = start(conn, request)
    try:
        return handle.wait(timeout)
    except ChannelTimeout:
        handle.close()
        raise
