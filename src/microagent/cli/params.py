"""click parameter types shared by the commands (validation at the edge)."""

from __future__ import annotations

from typing import Any

import click

from microagent import durations
from microagent.errors import Permanent


class Seconds(click.ParamType):
    """A duration in seconds: finite, non-negative, bounded (``microagent.durations``).

    A bad value is a usage error (exit 2), like any other bad flag.
    """

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        what = f"--{param.name.replace('_', '-')}" if param is not None and param.name else "duration"
        try:
            return durations.seconds(value, what)
        except Permanent as exc:
            self.fail(f"{exc.message} ({exc.remediation})", param, ctx)


SECONDS = Seconds()
