"""microagent: AI-agent workspaces in Linux microVMs.

The public Python API (see docs/sdk.md). Importing ``microagent`` is cheap:
every name below, the error classes included, is loaded on first use, so
the ``microagent`` command's own start-up (``--help``) pays for none of it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs start-up time; mypy reads this block
    from typing import Any

    from microagent.channel.exec import ExecResult
    from microagent.errors import (
        ChannelClosed,
        Conflict,
        InvalidRequest,
        MicroagentError,
        NotFound,
        Permanent,
        PolicyDenied,
        ResourceExhausted,
        Transient,
        Unsupported,
    )
    from microagent.sdk import Workspace, run
    from microagent.workspace.state import WorkspaceState

__version__ = "0.1.0"

__all__ = [
    "ChannelClosed",
    "Conflict",
    "ExecResult",
    "InvalidRequest",
    "MicroagentError",
    "NotFound",
    "Permanent",
    "PolicyDenied",
    "ResourceExhausted",
    "Transient",
    "Unsupported",
    "Workspace",
    "WorkspaceState",
    "__version__",
    "run",
]

_ERRORS = ("ChannelClosed", "Conflict", "InvalidRequest", "MicroagentError", "NotFound", "Permanent",
           "PolicyDenied", "ResourceExhausted", "Transient", "Unsupported")
_LAZY = {
    **{name: ("microagent.errors", name) for name in _ERRORS},
    "Workspace": ("microagent.sdk", "Workspace"),
    "run": ("microagent.sdk", "run"),
    "ExecResult": ("microagent.channel.exec", "ExecResult"),
    "WorkspaceState": ("microagent.workspace.state", "WorkspaceState"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'microagent' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
