"""The click group behind ``microagent``: it loads only the invoked command's module.

:mod:`.main` sends every command line here except ``--help`` and a plain
``exec``; click errors become exit 2 (``USAGE``) here, library errors
propagate to :func:`.main.main`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from microagent.cli import exitcodes
from microagent.cli.main import COMMANDS, overview


def load_command(name: str) -> click.Command:
    module, attr = COMMANDS[name].split(":")
    cmd: click.Command = getattr(importlib.import_module(module), attr)
    return cmd


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def get_help(self, ctx: click.Context) -> str:
        return overview().rstrip("\n")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="microagent", prog_name="microagent")
def cli() -> None:
    """Run AI-agent workspaces in Linux microVMs."""


def invoke(argv: list[str], as_json: bool) -> Any:
    """Run the group on ``argv``; a click usage error exits 2, Ctrl-C at a prompt 130."""
    try:
        return cli.main(args=argv, prog_name="microagent", standalone_mode=False)
    except click.exceptions.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except click.ClickException as exc:
        if as_json:
            from microagent.cli.output import print_error

            print_error({"kind": "permanent", "message": exc.format_message(),
                         "remediation": "see 'microagent --help'"}, True)
        else:
            exc.show()
        sys.exit(exitcodes.USAGE)
