"""Unix sockets with paths longer than ``sun_path`` allows.

``sun_path`` holds 108 bytes; state directories under pytest or deep homes
exceed it.  Connecting through ``/proc/self/fd/<dirfd>/<name>`` resolves the
directory by descriptor, so any path length works on Linux.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

_SUN_PATH_MAX = 100


def connect_unix(path: Path | str, timeout: float | None = None) -> socket.socket:
    """Connect a stream socket to ``path``.

    :raises OSError: when the socket is missing or refuses.
    """
    path = Path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            sock.connect(str(path))
        else:
            dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                sock.connect(f"/proc/self/fd/{dirfd}/{path.name}")
            finally:
                os.close(dirfd)
    except BaseException:
        sock.close()
        raise
    return sock
