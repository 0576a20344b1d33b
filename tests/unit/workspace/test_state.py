"""The state table and its guard."""

from __future__ import annotations

import pytest

from microagent.errors import Conflict
from microagent.workspace.state import ALLOWED_FROM, RESULT_STATE, WorkspaceState, require_state

S = WorkspaceState


@pytest.mark.parametrize("state", [S.PREPARED, S.HALTED, S.STOPPED, S.FAILED])
def test_start_allowed_from_rest_states(state: WorkspaceState) -> None:
    require_state("start", "w", state)


@pytest.mark.parametrize("state", [S.RUNNING, S.QUARANTINED, S.STARTING, S.PAUSED])
def test_start_refused_while_live(state: WorkspaceState) -> None:
    with pytest.raises(Conflict) as info:
        require_state("start", "w", state)
    assert f"workspace w is {state.value}" in info.value.message
    assert "prepared, stopped, halted, failed" in info.value.message
    assert info.value.details["state"] == state.value


@pytest.mark.parametrize("op", ["exec", "cp", "connect", "start", "halt", "quarantine"])
def test_quarantined_refuses_everything_but_stop_kill(op: str) -> None:
    with pytest.raises(Conflict) as info:
        require_state(op, "w", S.QUARANTINED)
    assert "quarantined" in info.value.message
    assert "stop or kill" in info.value.remediation


@pytest.mark.parametrize("op", ["stop", "kill"])
def test_quarantined_can_be_stopped_or_killed(op: str) -> None:
    require_state(op, "w", S.QUARANTINED)


def test_delete_refused_while_running_names_force() -> None:
    with pytest.raises(Conflict) as info:
        require_state("delete", "w", S.RUNNING)
    assert "delete -f w" in info.value.remediation


def test_exec_on_halted_says_how_to_start() -> None:
    with pytest.raises(Conflict) as info:
        require_state("exec", "w", S.HALTED)
    assert "microagent start w" in info.value.remediation


def test_table_is_consistent() -> None:
    assert set(RESULT_STATE) - {"create"} <= set(ALLOWED_FROM)
    for op, states in ALLOWED_FROM.items():
        assert states, op
    assert WorkspaceState.parse("bogus") is S.UNKNOWN
    assert str(S.RUNNING) == "running"
