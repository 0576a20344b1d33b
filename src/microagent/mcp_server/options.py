"""The limits one MCP server runs with; every tool call gets these unless it asks for less."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Output an exec or run keeps per stream, a file read returns, a log read returns (bytes).
DEFAULT_OUTPUT_LIMIT = 256 << 10
#: The most a single call may ask for (the library's own in-memory ceiling).
MAX_OUTPUT_LIMIT = 16 << 20
#: Seconds an exec or run may take unless the call says otherwise.
DEFAULT_EXEC_TIMEOUT_S = 120.0
#: Workspaces (named or throwaway) one server may have at once.
DEFAULT_MAX_WORKSPACES = 4
#: The tag ``list`` shows on workspaces this server created.
CREATED_BY = "mcp"


@dataclass(frozen=True)
class ServerOptions:
    """What ``microagent mcp`` was started with.

    :param output_limit: default bytes kept per output stream and per file or log read.
    :param exec_timeout: default seconds for ``workspace_exec`` and ``run``.
    :param max_workspaces: how many workspaces this server may have created and not yet deleted.
    :param state_dir: the state root (default ``~/.microagent``).
    :param backend: the backend for new workspaces (default: per host).
    """

    output_limit: int = DEFAULT_OUTPUT_LIMIT
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT_S
    max_workspaces: int = DEFAULT_MAX_WORKSPACES
    state_dir: Path | None = None
    backend: str | None = None
    supervisor: str | None = None

    def __post_init__(self) -> None:
        from microagent.durations import seconds
        from microagent.errors import Permanent

        if not 1 <= self.output_limit <= MAX_OUTPUT_LIMIT:
            raise Permanent(f"output limit {self.output_limit} is out of range",
                            f"give 1 to {MAX_OUTPUT_LIMIT} bytes")
        if self.max_workspaces < 0:
            raise Permanent(f"workspace cap {self.max_workspaces} is negative", "give 0 or more")
        object.__setattr__(self, "exec_timeout", seconds(self.exec_timeout, "exec timeout"))
