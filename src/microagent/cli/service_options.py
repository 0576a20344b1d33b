"""The setup and service options ``run`` and ``create`` share (docs/services.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def setup_service_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--setup`` (repeatable), ``--service`` and ``--restart``."""
    f = click.option("--restart", default="never", show_default=True,
                     type=click.Choice(["never", "on-failure", "always"]),
                     help="restart the --service when it exits (on-failure: non-zero or a signal), "
                          "after 1 s doubling to 30 s")(f)
    f = click.option("--service", default=None, metavar="CMD",
                     help="a long-running command guest init starts (sh -c CMD) on every boot; its output: "
                          "'microagent logs NAME --service'")(f)
    f = click.option("--setup", multiple=True, metavar="CMD",
                     help="a command (sh -c CMD) run once, in order, at the first start; a failing one "
                          "leaves the workspace failed (repeatable)")(f)
    return f


def check_services(setup: tuple[str, ...], service: str | None, restart: str) -> None:
    """Raises ``InvalidRequest`` (a usage error under ``usage_errors``) for bad input."""
    from microagent.workspace.services import check_services as check

    check(setup, service, restart)


def volume_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-v/--volume`` (repeatable), shared by ``run`` and ``create`` (docs/volumes.md)."""
    return click.option("-v", "--volume", "volume", multiple=True, metavar="SRC:/GUEST/PATH[:ro]",
                        help="attach volume SRC (see 'microagent volume') or host folder SRC (an absolute "
                             "path: live on qemu; on firecracker a copy made at start, read-only unless :rw, "
                             "changes never written back) at /GUEST/PATH; :ro read-only (repeatable)")(f)


def check_volumes(volume: tuple[str, ...]) -> None:
    """Raises ``InvalidRequest`` (a usage error under ``usage_errors``) for a bad ``-v``."""
    from microagent.workspace.volumes import parse_mount_specs

    parse_mount_specs(volume)
