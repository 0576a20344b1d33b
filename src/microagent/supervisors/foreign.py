"""Supervisors whose host OS is not this one answer every command with
``unsupported`` naming the host OS: never an ImportError, never a traceback.

The real Apple VF and Hyper-V implementations import their OS bindings only
after this check passes (docs/architecture.md, "Layers").
"""

from __future__ import annotations

from microagent.errors import Unsupported
from microagent.host.detect import host_os
from microagent.host.selection import OS_NAMES
from microagent.supervisors.base import Backend
from microagent.vmkit.types import Request, Response


class ForeignHostBackend(Backend):
    """A backend running on the wrong host OS: every command is refused."""

    def __init__(self, name: str, needs_os: str) -> None:
        self.name = name
        self.needs_os = needs_os

    def _refuse(self, request: Request) -> Response:
        raise Unsupported(
            f"the {self.name} supervisor needs a {OS_NAMES[self.needs_os]} host; "
            f"this host runs {OS_NAMES.get(host_os(), host_os())}",
            "use the backend of this host OS (see 'microagent host')",
        )

    host = check = prepare = start = run = inspect = halt = _refuse
    quarantine = stop = kill = delete = pause = resume = snapshot = console = _refuse
