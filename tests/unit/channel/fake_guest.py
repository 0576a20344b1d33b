"""FakeGuest: an in-process stand-in for the guest end of the channel.

It speaks docs/protocol.md over one socket (HELLO, sessions, flow control in
both directions) but runs no real processes: ``exec`` understands a few
scripted argv forms, ``put``/``get`` use an in-memory dict, ``forward``
echoes. Knobs let tests withhold credit, overrun credit, ignore HELLO or
vanish mid-session. It is a test double for the mux, not a reference guest;
the real guest is tested in tests/agent/.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from microagent.channel.frames import (
    INITIAL_WINDOW,
    MAX_DATA_CHUNK,
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
    json_frame,
)


class FakeSession:
    """One session inside the fake guest; the handler's view of it."""

    def __init__(self, guest: FakeGuest, sid: int, body: dict[str, Any]) -> None:
        self.guest = guest
        self.id = sid
        self.body = body
        self.cond = threading.Condition()
        self.stdin: collections.deque[bytes] = collections.deque()
        self.stdin_eof = False
        self.credit = {0: INITIAL_WINDOW, 1: INITIAL_WINDOW, 2: INITIAL_WINDOW}
        self.received = 0  # stdin bytes received, not yet granted back
        self.consumed = 0
        self.controls: list[dict[str, Any]] = []
        self.closed = False  # host CLOSE or session ended

    # -- guest -> host
    def send_data(self, stream: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            with self.cond:
                while self.credit[stream] <= 0 and not self.closed and not self.guest.dead and not self.guest.ignore_credit:
                    self.cond.wait(0.05)
                if self.closed or self.guest.dead:
                    return
                n = min(len(view), MAX_DATA_CHUNK) if self.guest.ignore_credit else min(
                    len(view), MAX_DATA_CHUNK, self.credit[stream]
                )
                self.credit[stream] -= n
            self.guest.send(encode_frame(self.id, FrameType.DATA, encode_data(stream, bytes(view[:n]))))
            view = view[n:]

    def send_eof(self, stream: int) -> None:
        self.guest.send(encode_frame(self.id, FrameType.DATA, encode_data(stream)))

    def control(self, body: dict[str, Any]) -> None:
        self.guest.send(json_frame(self.id, FrameType.CONTROL, body))

    def exit(self, body: dict[str, Any]) -> None:
        self.guest.end(self.id)
        self.guest.send(json_frame(self.id, FrameType.EXIT, body))

    def error(self, code: str, message: str = "") -> None:
        self.guest.end(self.id)
        self.guest.send(json_frame(self.id, FrameType.ERROR, {"code": code, "message": message}))

    # -- host -> guest
    def read_stdin(self, timeout: float = 10.0) -> bytes:
        """Next stdin chunk (granting credit as consumed); b"" at EOF."""
        with self.cond:
            end = time.monotonic() + timeout
            while not self.stdin and not self.stdin_eof and not self.closed:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("fake guest: no stdin")
                self.cond.wait(left)
            if not self.stdin:
                return b""
            chunk = self.stdin.popleft()
            self.consumed += len(chunk)
            grant = 0
            if self.consumed >= INITIAL_WINDOW // 2 and not self.guest.hold_credit:
                grant, self.consumed = self.consumed, 0
                self.received -= grant
        if grant:
            self.guest.send(encode_frame(self.id, FrameType.WINDOW, encode_window(0, grant)))
        return chunk

    def read_all_stdin(self) -> bytes:
        out = bytearray()
        while chunk := self.read_stdin():
            out += chunk
        return bytes(out)


Handler = Callable[[FakeSession], None]


class FakeGuest:
    """The fake guest end of a socketpair; runs until the socket closes.

    :param sock: the guest end of a connected socket pair.
    :param version: the version it reports in ``HELLO``.
    :param answer_hello: False to never answer ``HELLO``.
    :param hold_credit: True to never grant stdin credit back.
    :param ignore_credit: True to send output regardless of the host's credit.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        version: int = 1,
        answer_hello: bool = True,
        hold_credit: bool = False,
        ignore_credit: bool = False,
    ) -> None:
        self.sock = sock
        self.version = version
        self.answer_hello = answer_hello
        self.hold_credit = hold_credit
        self.ignore_credit = ignore_credit
        self.dead = False
        self.helloed = False
        self.files: dict[str, tuple[bytes, int]] = {}
        self.sessions: dict[int, FakeSession] = {}
        self.received_frames: list[Frame | OversizedFrame] = []
        self.errors_sent: list[tuple[int, str]] = []
        self.handlers: dict[str, Handler] = {
            "exec": self._exec,
            "shell": self._exec,
            "put": self._put,
            "get": self._get,
            "forward": self._forward,
            "shutdown": self._shutdown,
        }
        self._lock = threading.Lock()
        self._wlock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="fake-guest")
        self.thread.start()

    # ---------------------------------------------------------- plumbing

    def send(self, frame: bytes) -> None:
        if self.dead:
            return
        try:
            with self._wlock:
                self.sock.sendall(frame)
        except OSError:
            self.dead = True

    def end(self, sid: int) -> None:
        with self._lock:
            s = self.sessions.pop(sid, None)
        if s is not None:
            with s.cond:
                s.closed = True
                s.cond.notify_all()

    def _error(self, sid: int, code: str, message: str = "") -> None:
        self.errors_sent.append((sid, code))
        self.end(sid)
        self.send(json_frame(sid, FrameType.ERROR, {"code": code, "message": message}))

    def grant(self, sid: int, stream: int, n: int) -> None:
        """Grant the host ``n`` bytes of credit on ``stream`` by hand."""
        s = self.sessions[sid]
        with s.cond:
            s.received -= n
        self.send(encode_frame(sid, FrameType.WINDOW, encode_window(stream, n)))

    def vanish(self) -> None:
        """Drop the connection abruptly, as a crashed guest would."""
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _loop(self) -> None:
        dec = FrameDecoder()
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                for ev in dec.feed(data):
                    self.received_frames.append(ev)
                    if isinstance(ev, OversizedFrame):
                        self._error(ev.session, "frame_too_large")
                    else:
                        self._dispatch(ev)
        except OSError:
            pass
        self.dead = True
        with self._lock:
            sessions = list(self.sessions.values())
        for s in sessions:
            with s.cond:
                s.closed = True
                s.cond.notify_all()

    def _dispatch(self, f: Frame) -> None:
        t = f.known_type
        if f.session == 0:
            if t == FrameType.HELLO:
                body = decode_json(f.payload)
                if not self.answer_hello:
                    return
                if body.get("version") != 1:
                    self._error(0, "version_mismatch", "want 1")
                    return
                self.helloed = True
                self.send(
                    json_frame(
                        0,
                        FrameType.HELLO,
                        {
                            "protocol": "microagent-channel",
                            "version": self.version,
                            "role": "guest",
                            "agent": "fake-guest 0",
                            "pid": 1,
                            "features": sorted(self.handlers),
                        },
                    )
                )
            return
        if not self.helloed:
            self._error(f.session, "no_hello")
            return
        with self._lock:
            s = self.sessions.get(f.session)
        if t == FrameType.OPEN:
            if s is not None:
                self._error(f.session, "session_exists")
                return
            try:
                body = decode_json(f.payload)
            except Exception:
                self._error(f.session, "bad_request")
                return
            handler = self.handlers.get(str(body.get("kind")))
            if handler is None:
                self._error(f.session, "bad_request", "unknown kind")
                return
            s = FakeSession(self, f.session, body)
            with self._lock:
                self.sessions[f.session] = s
            threading.Thread(target=self._run, args=(handler, s), daemon=True).start()
        elif s is None:
            return
        elif t == FrameType.DATA:
            stream, data = decode_data(f.payload)
            with s.cond:
                if not data:
                    s.stdin_eof = True
                else:
                    s.received += len(data)
                    if s.received > INITIAL_WINDOW:
                        overrun = True
                    else:
                        overrun = False
                        s.stdin.append(data)
                s.cond.notify_all()
            if data and overrun:
                self._error(f.session, "flow_control")
        elif t == FrameType.WINDOW:
            stream, inc = decode_window(f.payload)
            with s.cond:
                s.credit[stream] += inc
                s.cond.notify_all()
        elif t == FrameType.CONTROL:
            s.controls.append(decode_json(f.payload))
        elif t == FrameType.CLOSE:
            self.end(f.session)
        else:
            self._error(f.session, "unknown_frame")

    def _run(self, handler: Handler, s: FakeSession) -> None:
        try:
            handler(s)
        except Exception as exc:  # keep the fake alive; report on the session
            if not s.closed:
                s.error("io_error", repr(exc))

    # ---------------------------------------------------------- handlers

    @staticmethod
    def _exited(code: int, **extra: Any) -> dict[str, Any]:
        now = int(time.time() * 1000)
        return {
            "status": "exited",
            "exit_code": code,
            "signal": 0,
            "stdout_truncated": False,
            "stderr_truncated": False,
            "started_at_ms": now,
            "completed_at_ms": now,
            **extra,
        }

    def _exec(self, s: FakeSession) -> None:
        argv = s.body.get("argv") or ["sh"]
        prog, args = argv[0], argv[1:]
        if prog == "missing":
            s.exit({"status": "failed_to_start", "exit_code": 127, "signal": 0,
                    "error": {"code": "not_found", "message": "missing: not found"}})
            return
        s.control({"started": {"pid": 4242}})
        code = 0
        if prog == "echo":
            s.send_data(1, (" ".join(args) + "\n").encode())
        elif prog == "stderr":
            s.send_data(2, " ".join(args).encode())
        elif prog == "exit":
            code = int(args[0])
        elif prog == "cat":
            while chunk := s.read_stdin():
                s.send_data(1, chunk)
        elif prog == "count-stdin":
            n = len(s.read_all_stdin())
            s.send_data(1, str(n).encode())
        elif prog == "zeros":
            n = int(args[0])
            block = bytes(MAX_DATA_CHUNK)
            while n > 0 and not s.closed:
                s.send_data(1, block[: min(n, len(block))])
                n -= len(block)
        elif prog == "sleep":
            end = time.monotonic() + float(args[0])
            while time.monotonic() < end and not s.closed:
                time.sleep(0.01)
        elif prog == "env":
            s.send_data(1, "\n".join(s.body.get("env", [])).encode())
        elif prog == "wait-control":
            while not s.controls and not s.closed:
                time.sleep(0.01)
            if s.controls:
                s.send_data(1, repr(s.controls[0]).encode())
        if s.closed:
            return
        s.send_eof(1)
        if not s.body.get("pty"):
            s.send_eof(2)
        s.exit(self._exited(code))

    def _put(self, s: FakeSession) -> None:
        path = s.body["path"]
        if not path.startswith("/"):
            s.error("not_absolute", path)
            return
        if path.startswith("/missing/"):
            s.error("not_found", "no parent")
            return
        data = s.read_all_stdin()
        self.files[path] = (data, int(s.body.get("mode", 0o644)))
        s.exit({"status": "ok", "bytes": len(data)})

    def _get(self, s: FakeSession) -> None:
        path = s.body["path"]
        if path not in self.files:
            s.error("not_found", path)
            return
        data, mode = self.files[path]
        s.control({"stat": {"size": len(data), "mode": 0o100000 | mode, "uid": 0, "gid": 0}})
        s.send_data(1, data)
        s.send_eof(1)
        s.exit({"status": "ok", "bytes": len(data)})

    def _forward(self, s: FakeSession) -> None:
        if s.body.get("port") == 1:
            s.error("connect_failed", "refused")
            return
        s.control({"connected": True})
        while chunk := s.read_stdin():
            s.send_data(1, chunk)
        s.send_eof(1)
        s.exit({"status": "ok"})

    def _shutdown(self, s: FakeSession) -> None:
        s.exit({"status": "ok"})
        time.sleep(0.05)
        self.vanish()


def fake_pair(**kwargs: Any) -> tuple[socket.socket, FakeGuest]:
    """A socketpair with a :class:`FakeGuest` on one end; returns the host end."""
    host, guest = socket.socketpair()
    return host, FakeGuest(guest, **kwargs)
