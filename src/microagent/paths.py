"""Where microagent keeps its state (DESIGN.md §4).

Owns path arithmetic only: no I/O beyond ``mkdir`` on request.  The state
root is ``--state-dir`` → ``MICROAGENT_STATE_DIR`` → ``~/.microagent``
(``$TMPDIR/microagent`` when there is no home).
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_arch() -> str:
    """The host architecture in microagent's spelling (``x86_64`` or ``aarch64``)."""
    machine = platform.machine().lower()
    return ARCH_ALIASES.get(machine, machine)


def state_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The state directory root."""
    if override:
        return Path(override).expanduser().absolute()
    env = os.environ.get("MICROAGENT_STATE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    home = os.environ.get("HOME")
    if home:
        return Path(home) / ".microagent"
    return Path(tempfile.gettempdir()) / "microagent"


def kernel_dir(root: Path, backend: str, arch: str | None = None) -> Path:
    """``<root>/kernels/<backend>/<arch>``: the default kernel and its companions."""
    return root / "kernels" / backend / (arch or host_arch())


def workspace_dir(root: Path, name: str) -> Path:
    """``<root>/workspaces/<name>``: the disk and the manifest."""
    return root / "workspaces" / name


def runtime_dir(root: Path, name: str) -> Path:
    """``<root>/<name>``: runtime state, sockets, serial.log, events."""
    return root / name


def images_dir(root: Path) -> Path:
    return root / "images"


def package_root() -> Path:
    """The directory of the installed ``microagent`` package."""
    return Path(__file__).resolve().parent
