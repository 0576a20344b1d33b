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
import sys

import click

from microagent.cli import cmd_cluster
from microagent.cli.exec_run import (
    DEFAULT_OUTPUT_LIMIT,
    RawTerminal,
    ResizeForwarder,
    open_store,
    pump_terminal,
    report_abnormal,
    run_exec,
    terminal_size,
)
from microagent.cli.main import json_option, state_dir_option, usage_errors
from microagent.cli.output import emit_json
from microagent.cli.params import SECONDS

DETACH_KEY = b"\x1d"  # Ctrl-]


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
@cmd_cluster.on_cluster(cmd_cluster.exec_)
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="environment variable")
@click.option("--workdir", "-w", default=None, help="working directory in the guest")
@click.option("--user", "-u", default=None, help="user in the guest (name, UID or UID:GID)")
@click.option("--timeout", type=SECONDS, default=None, help="kill the command after S seconds (exit 124)")
@click.option("-i", "--interactive", is_flag=True, help="forward stdin to the command")
@click.option("-t", "--tty", is_flag=True, help="run on a guest pty; local terminal in raw mode")
@click.option("--output-limit", type=click.IntRange(min=0), default=DEFAULT_OUTPUT_LIMIT, metavar="BYTES",
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
    return run_exec(name, command, env=env, workdir=workdir,
                    user=user, timeout=timeout, interactive=interactive, tty=tty, output_limit=output_limit,
                    supervisor=supervisor, state_dir=state_dir, as_json=as_json)


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
    store = open_store(state_dir, supervisor)
    with GuestConnection(store, name, "connect") as gs:
        if line is not None:
            if as_json:
                result = gs.send_line(line, timeout=timeout, user=user)
                emit_json({"ok": True, "workspace": name, "result": result.to_dict()})
            else:
                result = gs.send_line(line, timeout=timeout, user=user, output=sys.stdout.buffer)
                report_abnormal(result)
            return int(result.exit_code)
        rows, cols = terminal_size()
        session = gs.open_shell(rows=rows, cols=cols, term=os.environ.get("TERM") or "xterm-256color",
                                user=user, output=sys.stdout.buffer)
        sys.stderr.write(f"connected to {name}; Ctrl-] detaches\r\n")
        sys.stderr.flush()
        with RawTerminal(True), ResizeForwarder(session):
            detached = pump_terminal(session, forward_stdin=True, detach_key=DETACH_KEY)
        if detached:
            session.close()
            sys.stderr.write(f"\ndetached from {name}; it is still running\n")
            return 0
        result = session.wait()
    return int(result.exit_code)
