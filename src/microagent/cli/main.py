"""The ``microagent`` command: a click adapter over the library.

Subcommands live in ``cli/cmd_*.py`` and are imported only when invoked, so
``microagent --help`` stays cheap.  This module is the one catch site for
:class:`~microagent.errors.MicroagentError`: it renders the error (text or
the JSON envelope) and exits with a named code; no traceback for user errors.

One exit-code rule for a wrong command line (docs/cli.md): a bad flag value,
a bad argument or a bad combination exits 2 (``USAGE``) in every command,
whether click or the library's own input checks found it; nothing was done.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from microagent.cli import exitcodes
from microagent.fsutil import restrict_umask

#: subcommand -> "module:function"
COMMANDS = {
    "gc": "microagent.cli.cmd_gc:gc",
    "host": "microagent.cli.cmd_host:host",
    "doctor": "microagent.cli.cmd_host:doctor",
    "kernel": "microagent.cli.cmd_kernel:kernel",
    "image": "microagent.cli.cmd_image:image",
    "run": "microagent.cli.cmd_run:run",
    "create": "microagent.cli.cmd_workspace:create",
    "start": "microagent.cli.cmd_workspace:start",
    "halt": "microagent.cli.cmd_workspace:halt",
    "stop": "microagent.cli.cmd_workspace:stop",
    "kill": "microagent.cli.cmd_workspace:kill",
    "quarantine": "microagent.cli.cmd_workspace:quarantine",
    "pause": "microagent.cli.cmd_pause:pause",
    "resume": "microagent.cli.cmd_pause:resume",
    "delete": "microagent.cli.cmd_workspace:delete",
    "list": "microagent.cli.cmd_workspace:list_",
    "ls": "microagent.cli.cmd_workspace:ls",
    "ps": "microagent.cli.cmd_workspace:ps",
    "status": "microagent.cli.cmd_workspace:status",
    "wait": "microagent.cli.cmd_workspace:wait",
    "logs": "microagent.cli.cmd_workspace:logs",
    "events": "microagent.cli.cmd_workspace:events",
    "cp": "microagent.cli.cmd_workspace:cp",
    "exec": "microagent.cli.cmd_exec:exec_",
    "connect": "microagent.cli.cmd_exec:connect",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="microagent", prog_name="microagent")
def cli() -> None:
    """Run AI-agent workspaces in Linux microVMs."""


def _json_requested(argv: list[str]) -> bool:
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in head or os.environ.get("MICROAGENT_OUTPUT") == "json"


def _failure_code(argv: list[str]) -> int:
    """``run``/``exec`` report microagent's own failures as 125 (docker convention)."""
    first = next((a for a in argv if not a.startswith("-")), "")
    return exitcodes.RUN_INFRA if first in ("run", "exec") else exitcodes.FAILURE


def main(argv: list[str] | None = None) -> None:
    from microagent.errors import MicroagentError

    argv = sys.argv[1:] if argv is None else argv
    as_json = _json_requested(argv)
    restrict_umask()  # everything under the state root, and every socket a VMM opens, is the user's alone
    try:
        code: Any = cli.main(args=argv, prog_name="microagent", standalone_mode=False)
    except MicroagentError as err:
        from microagent.cli.output import print_error

        print_error(err.to_dict(), as_json)
        sys.exit(_failure_code(argv))
    except click.exceptions.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except BadInput as exc:
        from microagent.cli.output import print_error

        print_error(exc.error.to_dict(), as_json)
        sys.exit(exitcodes.USAGE)
    except click.ClickException as exc:
        if as_json:
            from microagent.cli.output import print_error

            print_error({"kind": "permanent", "message": exc.format_message(),
                         "remediation": "see 'microagent --help'"}, True)
        else:
            exc.show()
        sys.exit(exitcodes.USAGE)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: say it is a bug, keep the traceback
        traceback.print_exc()
        sys.stderr.write(f"microagent: internal error: {exc}\n")
        sys.exit(_failure_code(argv))
    sys.exit(code if isinstance(code, int) else exitcodes.OK)


class BadInput(click.UsageError):
    """A wrong command line found by the library's input checks: exit 2, its message and hint kept."""

    def __init__(self, error: Any) -> None:
        super().__init__(error.message)
        self.error = error


@contextmanager
def usage_errors() -> Iterator[None]:
    """Around input checks that run before any side effect: their errors are usage errors."""
    from microagent.errors import Permanent

    try:
        yield
    except Permanent as exc:
        raise BadInput(exc) from exc


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="print one JSON document")(f)


def state_dir_option(f: Any) -> Any:
    return click.option("--state-dir", envvar="MICROAGENT_STATE_DIR", default=None,
                        help="state directory (default ~/.microagent)")(f)


def backend_option(f: Any) -> Any:
    return click.option("--backend", default=None,
                        help="firecracker | qemu | apple-vf | windows-hyperv (default: per host)")(f)
