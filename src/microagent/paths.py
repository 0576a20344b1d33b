"""Where microagent keeps its state (docs/state.md).

Owns path arithmetic, plus the one check every entry point makes: the state
root is ``--state-dir`` → ``MICROAGENT_STATE_DIR`` → ``~/.microagent``
(``$TMPDIR/microagent`` when there is no home), and it must be a directory
of the current user that nobody else can write (created 0700 when missing).
"""

from __future__ import annotations

import os
import stat

from microagent.errors import PolicyDenied
from microagent.fsutil import PRIVATE_DIR_MODE, private_dir

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib loads where a Path is made: exec's fast path takes the root as text
    from pathlib import Path
    from typing import TypeVar

    _P = TypeVar("_P", str, Path)

ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_arch() -> str:
    """The host architecture in microagent's spelling (``x86_64`` or ``aarch64``)."""
    import platform  # here, not at the top: the CLI's exec path does not need it

    machine = platform.machine().lower()
    return ARCH_ALIASES.get(machine, machine)


#: What the state root holds besides workspaces' runtime directories (never a runtime dir).
STATE_ROOT_ENTRIES = frozenset({"auth.json", "cache", "images", "kernels", "locks", "network", "run",
                                "workspaces"})


def state_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The state directory root, checked (and created) by :func:`require_private_root`.

    :raises PolicyDenied: when another user owns it or can write to it.
    """
    from pathlib import Path

    return Path(state_root_text(override))


def state_root_text(override: str | os.PathLike[str] | None = None) -> str:
    """:func:`state_root` as text, without importing pathlib (the CLI's exec fast path).

    :raises PolicyDenied: when another user owns it or can write to it.
    """
    if override:
        root = os.path.expanduser(os.fspath(override))
    elif os.environ.get("MICROAGENT_STATE_DIR"):
        root = os.path.expanduser(os.environ["MICROAGENT_STATE_DIR"])
    elif os.environ.get("HOME"):
        root = os.path.join(os.environ["HOME"], ".microagent")
    else:
        import tempfile

        root = os.path.join(tempfile.gettempdir(), "microagent")
    if not os.path.isabs(root):
        root = os.path.join(os.getcwd(), root)  # like Path.absolute(): no '..' resolved
    if os.sep == "/":
        root = root.rstrip("/") or "/"  # as Path has it: lstat of "link/" would follow the symlink
    return require_private_root(root)


def require_private_root(root: _P) -> _P:
    """Refuse a state root another user owns or can write to; create a missing one 0700
    and tighten one of ours that others can read.

    Another user's directory (or symlink) there could feed us planted workspaces and
    sockets, or read ours.  Not checked where there are no POSIX owners (Windows).

    :raises PolicyDenied: naming the path and the fix.
    """
    if not hasattr(os, "geteuid"):
        return root
    me = os.geteuid()
    pick_another = "use a state directory of your own: --state-dir DIR or MICROAGENT_STATE_DIR=DIR"
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        try:
            private_dir(root)
        except OSError:
            pass  # lost a race, or no permission: the checks below say which
        try:
            st = os.lstat(root)
        except OSError as exc:
            raise PolicyDenied(f"cannot create the state directory {root}: {exc.strerror}", pick_another) from None
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid != me:
            raise PolicyDenied(f"the state directory {root} is a symlink owned by uid {st.st_uid}, not by you "
                               f"(uid {me})", f"remove it if it is not yours, or {pick_another}")
        try:
            st = os.stat(root)
        except OSError as exc:
            raise PolicyDenied(f"the state directory {root} is a symlink to nowhere ({exc.strerror})",
                               pick_another) from None
    if not stat.S_ISDIR(st.st_mode):
        raise PolicyDenied(f"the state directory {root} is not a directory", pick_another)
    if st.st_uid != me:
        raise PolicyDenied(f"the state directory {root} is owned by uid {st.st_uid}, not by you (uid {me})",
                           f"remove it if it is not yours, or {pick_another}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise PolicyDenied(f"the state directory {root} is writable by other users (mode {mode:04o})",
                           f"check what is in it, then 'chmod 700 {root}'; or {pick_another}")
    if mode != PRIVATE_DIR_MODE:
        os.chmod(root, PRIVATE_DIR_MODE)
    return root


def kernel_dir(root: Path, backend: str, arch: str | None = None) -> Path:
    """``<root>/kernels/<backend>/<arch>``: the default kernel and its companions."""
    return root / "kernels" / backend / (arch or host_arch())


def workspace_dir(root: _P, name: str) -> _P:
    """``<root>/workspaces/<name>``: the disk and the manifest."""
    return _join(root, "workspaces", name)


def runtime_dir(root: _P, name: str) -> _P:
    """``<root>/run/<name>``: runtime state, sockets, serial.log, events.

    A subtree of its own, so no workspace name can alias ``images``, ``workspaces``, ...
    """
    return _join(root, "run", name)


def _join(root: _P, *parts: str) -> _P:
    """``root / parts``; text for a text root (:func:`state_root_text`: exec's fast path skips pathlib)."""
    return os.path.join(root, *parts) if isinstance(root, str) else root.joinpath(*parts)  # type: ignore[return-value]


def legacy_runtime_dir(root: Path, name: str) -> Path:
    """``<root>/<name>``: where earlier versions kept the runtime directory."""
    return root / name


def package_root() -> Path:
    """The directory of the installed ``microagent`` package."""
    from pathlib import Path

    return Path(__file__).resolve().parent
