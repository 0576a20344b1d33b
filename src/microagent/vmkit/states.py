"""The lifecycle states of a workspace, as the supervisor reports them (``event.state``).

One enum for the supervisors that record the states and for the workspace
layer that reasons about them (docs/state.md).
"""

from __future__ import annotations

from enum import Enum


class WorkspaceState(str, Enum):
    """A workspace's lifecycle state (``event.state`` of the supervisor)."""

    UNKNOWN = "unknown"
    PREPARED = "prepared"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    HALTED = "halted"
    QUARANTINED = "quarantined"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | None) -> "WorkspaceState":
        """The state named ``value``; unknown strings map to ``UNKNOWN``."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.UNKNOWN


S = WorkspaceState

#: States in which a VMM process is expected to exist.
LIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING, S.QUARANTINED})
