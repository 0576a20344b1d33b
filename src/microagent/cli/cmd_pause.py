"""``pause`` and ``resume``: stop and continue a workspace's vcpus.

``resume`` also continues a VM its VMM paused because the host disk was full,
once there is space again (docs/operations.md).
"""

from __future__ import annotations

from microagent.cli.cmd_workspace import _transition_command

pause = _transition_command("pause", "Stop the vcpus of NAME (memory and processes kept): paused.")
resume = _transition_command(
    "resume", "Continue paused NAME, also after a full host disk paused it (once there is space again).")
