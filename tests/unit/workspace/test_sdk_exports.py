"""The public face: ``microagent.__all__`` is pinned and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import microagent

EXPECTED = {
    "ChannelClosed", "Conflict", "ExecResult", "InvalidRequest", "MicroagentError", "NotFound",
    "Permanent", "PolicyDenied", "ResourceExhausted", "Transient", "Unsupported", "Workspace",
    "WorkspaceState", "__version__", "run",
}


def test_all_is_pinned_and_resolvable() -> None:
    assert set(microagent.__all__) == EXPECTED
    for name in microagent.__all__:
        assert getattr(microagent, name) is not None
    from microagent.channel import ExecResult
    from microagent.sdk import Workspace

    assert microagent.Workspace is Workspace and microagent.ExecResult is ExecResult
    assert issubclass(microagent.Conflict, microagent.MicroagentError)


def test_import_is_light() -> None:
    code = "import sys, microagent; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    heavy = [m for m in loaded if m.startswith(("microagent.channel", "microagent.workspace",
                                                "microagent.supervisors", "microagent.sdk"))]
    assert heavy == [] and "subprocess" not in loaded
