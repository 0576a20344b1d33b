"""Workspace states, which operation each state allows, and the guard.

The states (:mod:`microagent.vmkit.states`) are the supervisor's (docs/state.md);
this module adds the table
of which lifecycle operation is allowed from which observed state, and
:func:`require_state`, which raises :class:`~microagent.errors.Conflict`
naming the observed state and the allowed ones. The observed state always
comes from a reconciliation with the process table (supervisor ``inspect``),
never from a stale record alone.
"""

from __future__ import annotations

from microagent.errors import Conflict
from microagent.vmkit.states import LIVE_STATES, WorkspaceState

S = WorkspaceState

__all__ = ["ACTIVE_STATES", "ALLOWED_FROM", "AT_REST_STATES", "LIVE_STATES", "RESULT_STATE", "WorkspaceState",
           "require_state"]

#: States ``wait`` waits through (the workspace has not "left running" yet).
ACTIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING})
#: States in which the VM is gone and the disk is at rest.
AT_REST_STATES = frozenset({S.PREPARED, S.STOPPED, S.HALTED, S.FAILED, S.UNKNOWN})

#: operation -> states it may start from.
ALLOWED_FROM: dict[str, frozenset[WorkspaceState]] = {
    "start": frozenset({S.PREPARED, S.HALTED, S.STOPPED, S.FAILED}),
    "halt": frozenset({S.RUNNING}),
    # failed is allowed: a halt that timed out leaves the VMM running as 'failed'.
    "stop": frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING, S.QUARANTINED, S.FAILED}),
    "kill": frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING, S.QUARANTINED, S.FAILED}),
    "quarantine": frozenset({S.RUNNING, S.PAUSED}),
    "exec": frozenset({S.RUNNING}),
    "cp": frozenset({S.RUNNING}),
    "connect": frozenset({S.RUNNING}),
    "delete": AT_REST_STATES,
    # the disk is read (commit) or copied (clone): it must be at rest and consistent
    "commit": frozenset({S.PREPARED, S.HALTED, S.STOPPED}),
    "clone": frozenset({S.PREPARED, S.HALTED, S.STOPPED}),
}

#: operation -> the state a successful operation leads to.
RESULT_STATE: dict[str, WorkspaceState] = {
    "create": S.PREPARED,
    "start": S.RUNNING,
    "halt": S.HALTED,
    "stop": S.STOPPED,
    "kill": S.STOPPED,
    "quarantine": S.QUARANTINED,
}

_REMEDIATION: dict[WorkspaceState, str] = {
    S.QUARANTINED: "a quarantined workspace keeps its VM for forensics; stop or kill it first",
    S.RUNNING: "stop, halt or kill it first",
    S.STARTING: "wait for it to finish starting, or kill it",
    S.PAUSED: "resume, stop or kill it first",
    S.STOPPING: "wait for it to stop, or kill it",
}


def _for_op(op: str, name: str, observed: WorkspaceState) -> str:
    if op in ("exec", "cp", "connect", "halt", "quarantine"):
        return f"start it with 'microagent start {name}'" if observed in AT_REST_STATES else \
            _REMEDIATION.get(observed, "check it with 'microagent status'")
    if op in ("stop", "kill"):
        return "it is not running; nothing to do" if observed in AT_REST_STATES else "check 'microagent status'"
    if op == "delete":
        return f"{_REMEDIATION.get(observed, 'stop it first')}, or use 'microagent delete -f {name}'"
    return _REMEDIATION.get(observed, f"check it with 'microagent status {name}'")


def require_state(op: str, name: str, observed: WorkspaceState) -> None:
    """Allow ``op`` only from the states in :data:`ALLOWED_FROM`.

    :raises Conflict: naming the observed state and the allowed states.
    :raises KeyError: for an operation missing from the table (a bug).
    """
    allowed = ALLOWED_FROM[op]
    if observed in allowed:
        return
    names = ", ".join(s.value for s in WorkspaceState if s in allowed)
    raise Conflict(
        f"workspace {name} is {observed.value}; {op} needs one of: {names}",
        _for_op(op, name, observed),
        state=observed.value, allowed=sorted(s.value for s in allowed), operation=op,
    )
