"""What ``microagent exec`` does once its command line is parsed, and the terminal helpers.

Free of click: :mod:`.main` calls :func:`run_exec` directly for a plain
``exec NAME [--] CMD...`` and the click command in :mod:`.cmd_exec` calls it
for every other form, so both run the same code.
"""

from __future__ import annotations

import os
import sys

from microagent.cli.main import usage_errors

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs CLI start-up time; mypy reads this block
    from collections.abc import Sequence
    from types import FrameType
    from typing import Any

DEFAULT_OUTPUT_LIMIT = 16 << 20  # bytes kept of stdout and of stderr with --json


def open_store(state_dir: str | None, supervisor: str | None) -> Any:
    """The workspace store, built on first use: a plain exec of a running workspace never needs it."""
    from microagent.workspace.sessions import LazyStore

    return LazyStore(state_dir, supervisor)


def terminal_size() -> tuple[int, int]:
    for fd in (1, 0, 2):
        try:
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
        except OSError:
            continue
    return 24, 80


class RawTerminal:
    """Puts fd 0 in raw mode while active (when it is a terminal); restores it after."""

    def __init__(self, enabled: bool) -> None:
        self.fd = 0
        self.enabled = enabled and os.isatty(self.fd)
        self._saved: Any = None

    def __enter__(self) -> "RawTerminal":
        if self.enabled:
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


class ResizeForwarder:
    """Forwards SIGWINCH to a guest pty session while active."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._old: Any = None

    def _on_winch(self, signum: int, frame: FrameType | None) -> None:
        rows, cols = terminal_size()
        try:
            self.session.resize(rows, cols)
        except Exception:  # noqa: BLE001 - the channel may be gone; the main loop notices
            pass

    def __enter__(self) -> "ResizeForwarder":
        import signal

        try:
            self._old = signal.signal(signal.SIGWINCH, self._on_winch)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            import signal

            signal.signal(signal.SIGWINCH, self._old)


def pump_terminal(session: Any, *, forward_stdin: bool, detach_key: bytes | None) -> bool:
    """Copy local stdin to the session until it ends; True when the user detached."""
    import select  # here: a plain exec forwards no terminal

    fd = 0
    reading = forward_stdin
    while not session.done:
        if not reading:
            try:
                session.wait(0.2)
            except Exception:  # noqa: BLE001 - ChannelTimeout: keep waiting; others surface in wait()
                pass
            continue
        try:
            ready, _, _ = select.select([fd], [], [], 0.1)
        except InterruptedError:
            continue
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            session.close_stdin()
            reading = False
            continue
        if detach_key is not None and detach_key in data:
            before = data[: data.index(detach_key)]
            if before:
                session.write(before)
            return True
        session.write(data)
    return False


def report_abnormal(result: Any) -> None:
    if result.status in ("timed_out", "failed_to_start"):
        detail = result.error.get("message", "") if result.error else ""
        sys.stderr.write(f"microagent: command {result.status.replace('_', ' ')}"
                         f"{': ' + detail if detail else ''}\n")


def run_exec(name: str, command: Sequence[str], *, env: Sequence[str] = (), workdir: str | None = None,
             user: str | None = None, timeout: float | None = None, interactive: bool = False,
             tty: bool = False, output_limit: int = DEFAULT_OUTPUT_LIMIT, supervisor: str | None = None,
             state_dir: str | None = None, as_json: bool = False) -> int:
    """``microagent exec``: run COMMAND in running workspace NAME; return its exit code."""
    from microagent.workspace.sessions import GuestConnection, check_command_size, check_env

    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    with usage_errors():
        check_env(env)
        check_command_size(argv, env)
    store = open_store(state_dir, supervisor)
    with GuestConnection(store, name, "exec") as gs:
        if as_json:
            req = gs.request(argv, env=env, workdir=workdir, user=user, timeout=timeout,
                             stdin=sys.stdin.buffer if interactive else None, pty=tty,
                             stdout_limit=output_limit, stderr_limit=output_limit)
            result = gs.start_exec(req).wait()
            from microagent.cli.output import emit_json

            emit_json({"ok": True, "workspace": name, "result": result.to_dict()})
            return int(result.exit_code)
        if tty:
            rows, cols = terminal_size()
            req = gs.request(argv, env=env, workdir=workdir, user=user, timeout=timeout, stdin=True,
                             pty=True, rows=rows, cols=cols, term=os.environ.get("TERM") or None)
            with RawTerminal(interactive):  # raw before the first byte of output arrives
                session = gs.start_exec(req, stdout=sys.stdout.buffer)
                with ResizeForwarder(session):
                    pump_terminal(session, forward_stdin=interactive, detach_key=None)
                    result = session.wait()
        else:
            req = gs.request(argv, env=env, workdir=workdir, user=user, timeout=timeout,
                             stdin=sys.stdin.buffer if interactive else None)
            session = gs.start_exec(req, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)
            result = _wait_forwarding_interrupt(session)
    report_abnormal(result)
    return int(result.exit_code)


def _wait_forwarding_interrupt(session: Any) -> Any:
    """Wait for the command; the first Ctrl-C is sent to it as SIGINT, the second abandons it."""
    interrupted = False
    while True:
        try:
            return session.wait()
        except KeyboardInterrupt:
            if interrupted:
                session.close()
                raise
            interrupted = True
            import signal  # here: the signal module's start-up is paid only on a Ctrl-C

            session.signal(signal.SIGINT)
