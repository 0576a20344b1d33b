"""Which host socket reaches a running workspace's guest channel.

After ``start`` the per-workspace host helper serves ``control.sock`` (many
clients at once, same framed protocol), or, on hosts without AF_UNIX
(Windows), loopback TCP described by ``control.json`` (address + token).
Until a helper runs the VMM's own ``channel.sock`` is the only, single-client
path. This module is the one place that decides between them.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

CONTROL_SOCKET = "control.sock"
CONTROL_JSON = "control.json"
CHANNEL_SOCKET = "channel.sock"


def guest_channel_path(state_root: Path, name: str) -> Path:
    """The helper's ``control.sock`` or ``control.json`` when it serves one, else ``channel.sock``."""
    from pathlib import Path

    from microagent.runtime_state import locate_runtime_dir

    return Path(channel_endpoint(locate_runtime_dir(state_root, name)))


def channel_endpoint(rt: str | os.PathLike[str]) -> str:
    """:func:`guest_channel_path` in the runtime directory ``rt`` (exec's fast path knows it
    already, as text: pathlib costs start-up time)."""
    for endpoint in (CONTROL_SOCKET, CONTROL_JSON):
        path = os.path.join(rt, endpoint)
        if os.path.exists(path):
            return path
    return os.path.join(rt, CHANNEL_SOCKET)


def has_helper(state_root: Path, name: str) -> bool:
    """Whether a host helper endpoint (many concurrent clients) is present."""
    from microagent.runtime_state import locate_runtime_dir

    rt = locate_runtime_dir(state_root, name)
    return (rt / CONTROL_SOCKET).exists() or (rt / CONTROL_JSON).exists()
