"""microagent: AI-agent workspaces in Linux microVMs.

The public Python API (see docs/sdk.md). Importing ``microagent`` is cheap:
the error classes are loaded at once, everything else on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

__version__ = "0.1.0"

if TYPE_CHECKING:
    from microagent.channel.exec import ExecResult
    from microagent.sdk import Workspace, run
    from microagent.workspace.state import WorkspaceState

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

_LAZY = {
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
