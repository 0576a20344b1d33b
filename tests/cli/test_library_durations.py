"""The SDK and the library entry points validate durations themselves: no hang, no traceback.

``nan`` compares false with every deadline (a wait that never ends), ``inf``
overflows deadline arithmetic; both are refused as ``Permanent`` before
anything is looked up, built or started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

import microagent
from microagent.errors import Permanent
from microagent.workspace.lifecycle import WorkspaceStore

BAD = [float("nan"), float("inf"), -1.0, "soon"]


def _calls(root: Path) -> dict[str, Callable[[Any], Any]]:
    ws = microagent.Workspace("ghost", state_dir=root)
    store = WorkspaceStore(root)
    return {
        "Workspace.wait": lambda v: ws.wait(timeout=v),
        "Workspace.start": lambda v: ws.start(boot_timeout=v),
        "Workspace.exec": lambda v: ws.exec(["true"], timeout=v),
        "Workspace.send": lambda v: ws.send("true", timeout=v),
        "Workspace.create": lambda v: microagent.Workspace.create("ghost", state_dir=root, boot_timeout=v),
        "run": lambda v: microagent.run("builtin:busybox", ["true"], timeout=v, state_dir=root),
        "run boot_timeout": lambda v: microagent.run("builtin:busybox", ["true"], boot_timeout=v, state_dir=root),
        "WorkspaceStore.wait": lambda v: store.wait("ghost", timeout=v),
        "WorkspaceStore.start": lambda v: store.start("ghost", boot_timeout=v),
    }


@pytest.mark.parametrize("value", BAD, ids=repr)
@pytest.mark.parametrize("entry", list(_calls(Path("/nonexistent"))))
def test_bad_durations_are_permanent_errors(tmp_path: Path, entry: str, value: Any) -> None:
    with pytest.raises(Permanent) as info:
        _calls(tmp_path)[entry](value)
    assert "seconds" in info.value.message and info.value.remediation
    assert not (tmp_path / "workspaces").exists() and not (tmp_path / "images").exists()
