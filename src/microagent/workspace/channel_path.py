"""Which host socket reaches a running workspace's guest channel.

After ``start`` the per-workspace host helper serves ``control.sock`` (many
clients at once, same framed protocol). Until a helper runs (or on a backend
without one) the VMM's own ``channel.sock`` is the only, single-client path.
This module is the one place that decides between them.
"""

from __future__ import annotations

from pathlib import Path

from microagent.paths import runtime_dir

CONTROL_SOCKET = "control.sock"
CHANNEL_SOCKET = "channel.sock"


def guest_channel_path(state_root: Path, name: str) -> Path:
    """``<root>/<name>/control.sock`` when the helper serves it, else ``channel.sock``."""
    rt = runtime_dir(state_root, name)
    control = rt / CONTROL_SOCKET
    if control.exists():
        return control
    return rt / CHANNEL_SOCKET


def has_helper(state_root: Path, name: str) -> bool:
    """Whether a host helper socket (many concurrent clients) is present."""
    return (runtime_dir(state_root, name) / CONTROL_SOCKET).exists()
