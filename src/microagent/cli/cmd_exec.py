"""``exec`` and ``connect``: commands and shells inside a running workspace.

``exec NAME [options] -- CMD...`` streams stdout/stderr to the matching file
descriptors and exits with the guest command's exit code (125 when
microagent itself failed, 124 timed out, 126/127 could not start). ``-t``
runs the command on a guest pty with the local terminal in raw mode, and
forwards window size changes (SIGWINCH). ``connect NAME`` is an interactive
login shell; Ctrl-] detaches (closes the shell session, the workspace keeps
running). ``connect NAME --send LINE`` runs one line in the user's shell on a
pty and exits with its status.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from types import FrameType
from typing import Any

import click

from microagent.cli.main import json_option, state_dir_option, usage_errors
from microagent.cli.output import emit_json
from microagent.cli.params import SECONDS

DETACH_KEY = b"\x1d"  # Ctrl-]


def _store(state_dir: str | None, supervisor: str | None) -> Any:
    from microagent.workspace.lifecycle import WorkspaceStore

    return WorkspaceStore(state_dir, supervisor)


def _terminal_size() -> tuple[int, int]:
    for fd in (1, 0, 2):
        try:
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
        except OSError:
            continue
    return 24, 80


class _RawTerminal:
    """Puts fd 0 in raw mode while active (when it is a terminal); restores it after."""

    def __init__(self, enabled: bool) -> None:
        self.fd = 0
        self.enabled = enabled and os.isatty(self.fd)
        self._saved: Any = None

    def __enter__(self) -> "_RawTerminal":
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


class _ResizeForwarder:
    """Forwards SIGWINCH to a guest pty session while active."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._old: Any = None

    def _on_winch(self, signum: int, frame: FrameType | None) -> None:
        rows, cols = _terminal_size()
        try:
            self.session.resize(rows, cols)
        except Exception:  # noqa: BLE001 - the channel may be gone; the main loop notices
            pass

    def __enter__(self) -> "_ResizeForwarder":
        try:
            self._old = signal.signal(signal.SIGWINCH, self._on_winch)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGWINCH, self._old)


def _pump_terminal(session: Any, *, forward_stdin: bool, detach_key: bytes | None) -> bool:
    """Copy local stdin to the session until it ends; True when the user detached."""
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


def _report_abnormal(result: Any) -> None:
    if result.status in ("timed_out", "failed_to_start"):
        detail = result.error.get("message", "") if result.error else ""
        sys.stderr.write(f"microagent: command {result.status.replace('_', ' ')}"
                         f"{': ' + detail if detail else ''}\n")


# ------------------------------------------------------------------ exec


class _OptionsAroundName(click.Command):
    """Accept options before and after NAME: ``exec [OPTS] NAME [OPTS] [--] CMD...``.

    Options between NAME and the command are moved before NAME; parsing of
    options stops at ``--`` or at the first word after NAME that is not an
    option, so ``exec ws ls -la`` runs ``ls -la``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = set()
        for p in self.params:
            if isinstance(p, click.Option) and not p.is_flag:
                takes_value.update(p.opts)
                takes_value.update(p.secondary_opts)

        def option_span(i: int) -> int:
            tok = args[i]
            if tok.startswith("--"):
                return 2 if tok in takes_value else 1
            # short options, possibly combined (-it) or with an attached value (-eK=V)
            for j, ch in enumerate(tok[1:], start=1):
                if f"-{ch}" in takes_value:
                    return 1 if j < len(tok) - 1 else 2
            return 1

        i, name_at = 0, None
        while i < len(args):
            tok = args[i]
            if tok == "--":
                break
            if tok.startswith("-") and tok != "-":
                i += option_span(i)
                continue
            name_at = i
            break
        if name_at is not None:
            j = name_at + 1
            moved: list[str] = []
            while j < len(args) and args[j].startswith("-") and args[j] not in ("-", "--"):
                span = option_span(j)
                moved += args[j:j + span]
                j += span
            args = args[:name_at] + moved + [args[name_at]] + args[j:]
        return super().parse_args(ctx, args)



@click.command(cls=_OptionsAroundName, context_settings={"allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="environment variable")
@click.option("--workdir", "-w", default=None, help="working directory in the guest")
@click.option("--user", "-u", default=None, help="user in the guest (name, UID or UID:GID)")
@click.option("--timeout", type=SECONDS, default=None, help="kill the command after S seconds (exit 124)")
@click.option("-i", "--interactive", is_flag=True, help="forward stdin to the command")
@click.option("-t", "--tty", is_flag=True, help="run on a guest pty; local terminal in raw mode")
@click.option("--output-limit", type=click.IntRange(min=0), default=16 << 20, metavar="BYTES",
              help="with --json: bytes kept of stdout and of stderr (default 16 MiB, 0 = all)")
@click.option("--supervisor", default=None, help="path of the supervisor executable to use")
@state_dir_option
@json_option
def exec_(name: str, command: tuple[str, ...], env: tuple[str, ...], workdir: str | None, user: str | None,
          timeout: float | None, interactive: bool, tty: bool, output_limit: int, supervisor: str | None,
          state_dir: str | None, as_json: bool) -> int:
    """Run COMMAND in running workspace NAME; exit with its exit code.

    Options go before or after NAME; the command starts at -- or at the first word
    after NAME that is not an option.
    """
    from microagent.workspace.lifecycle import check_env
    from microagent.workspace.sessions import GuestConnection, check_command_size

    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    with usage_errors():
        check_env(env)
        check_command_size(argv, env)
    store = _store(state_dir, supervisor)
    with GuestConnection(store, name, "exec") as gs:
        if as_json:
            req = gs.request(argv, env=env, workdir=workdir, user=user, timeout=timeout,
                             stdin=sys.stdin.buffer if interactive else None, pty=tty,
                             stdout_limit=output_limit, stderr_limit=output_limit)
            result = gs.start_exec(req).wait()
            emit_json({"ok": True, "workspace": name, "result": result.to_dict()})
            return int(result.exit_code)
        if tty:
            rows, cols = _terminal_size()
            req = gs.request(argv, env=env, workdir=workdir, user=user, timeout=timeout, stdin=True,
                             pty=True, rows=rows, cols=cols, term=os.environ.get("TERM") or None)
            with _RawTerminal(interactive):  # raw before the first byte of output arrives
                session = gs.start_exec(req, stdout=sys.stdout.buffer)
                with _ResizeForwarder(session):
                    _pump_terminal(session, forward_stdin=interactive, detach_key=None)
                    result = session.wait()
        else:
            req = gs.request(argv, env=env, workdir=workdir, user=user, timeout=timeout,
                             stdin=sys.stdin.buffer if interactive else None)
            session = gs.start_exec(req, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)
            result = _wait_forwarding_interrupt(session)
    _report_abnormal(result)
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
            session.signal(signal.SIGINT)


# ------------------------------------------------------------------ connect


@click.command()
@click.argument("name")
@click.option("--send", "line", default=None, metavar="LINE",
              help="run LINE in the guest shell on a pty, print its output, exit with its status")
@click.option("--timeout", type=SECONDS, default=None, help="with --send: kill the line after S seconds (exit 124)")
@click.option("--user", "-u", default=None, help="user in the guest")
@click.option("--supervisor", default=None, help="path of the supervisor executable to use")
@state_dir_option
@json_option
def connect(name: str, line: str | None, timeout: float | None, user: str | None, supervisor: str | None,
            state_dir: str | None, as_json: bool) -> int:
    """Open an interactive shell in running workspace NAME (Ctrl-] detaches)."""
    from microagent.errors import InvalidRequest
    from microagent.workspace.sessions import GuestConnection

    with usage_errors():
        if line is None and as_json:
            raise InvalidRequest("connect is interactive and cannot print JSON",
                                 "use 'connect NAME --send LINE --json', or exec --json")
        if line is None and timeout is not None:
            raise InvalidRequest("--timeout needs --send", "pass --send LINE")
    store = _store(state_dir, supervisor)
    with GuestConnection(store, name, "connect") as gs:
        if line is not None:
            if as_json:
                result = gs.send_line(line, timeout=timeout, user=user)
                emit_json({"ok": True, "workspace": name, "result": result.to_dict()})
            else:
                result = gs.send_line(line, timeout=timeout, user=user, output=sys.stdout.buffer)
                _report_abnormal(result)
            return int(result.exit_code)
        rows, cols = _terminal_size()
        session = gs.open_shell(rows=rows, cols=cols, term=os.environ.get("TERM") or "xterm-256color",
                                user=user, output=sys.stdout.buffer)
        sys.stderr.write(f"connected to {name}; Ctrl-] detaches\r\n")
        sys.stderr.flush()
        with _RawTerminal(True), _ResizeForwarder(session):
            detached = _pump_terminal(session, forward_stdin=True, detach_key=DETACH_KEY)
        if detached:
            session.close()
            sys.stderr.write(f"\ndetached from {name}; it is still running\n")
            return 0
        result = session.wait()
    return int(result.exit_code)
