"""Unix stream sockets at paths of any length.

``sun_path`` holds 108 bytes; state directories under pytest or deep homes
exceed it.  Paths that are too long are reached through
``/proc/self/fd/<dirfd>/<name>``, which the kernel resolves by descriptor.
Standard library only: the CLI, supervisors and the channel all use it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing socket costs the CLI's exec start-up; connect needs only the socket given
    import _socket
    import socket

SUN_PATH_MAX = 100


def connect_any_length(sock: socket.socket, path: str | os.PathLike[str]) -> None:
    """``sock.connect(path)`` for an ``AF_UNIX`` socket, whatever the path length.

    :raises OSError: when nothing listens at ``path``.
    """
    path = os.fspath(path)
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        sock.connect(path)
        return
    directory, name = os.path.split(path)
    dirfd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/{name}")
    finally:
        os.close(dirfd)


def listen_unix(name: str, backlog: int = 64) -> _socket.socket:
    """Listen on ``name`` in the current directory, mode 0600.

    Binds a temporary name and renames it into place once it accepts, so a
    client that sees the path never finds a dead socket.  Callers ``chdir``
    into the runtime directory first: relative names keep ``sun_path`` short.
    The socket is a ``_socket.socket`` (``socket.socket``'s C base, without
    socket.py's imports: the channel helper runs once per workspace), so it
    has ``_accept()`` rather than ``accept()``.
    """
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    tmp = f".{name}.{os.getpid()}"
    sock.bind(tmp)
    os.chmod(tmp, 0o600)
    sock.listen(backlog)
    os.rename(tmp, name)
    return sock
