"""Opening a channel to a guest: connect the transport, then ``HELLO``.

``path`` is a Unix socket (QEMU's chardev, the channel helper's
``control.sock``, an agent's ``--listen``) or a helper's ``control.json``
(loopback TCP plus a token, for hosts without AF_UNIX such as Windows).
"""

from __future__ import annotations

import json
import os

from microagent.channel.mux import ChannelConnection
from microagent.channel.stream import SocketStream, connect_unix
from microagent.errors import ChannelClosed, Permanent

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


def open_channel(path: str | os.PathLike[str], *, hello_timeout: float = 10.0,
                 connect_timeout: float = 10.0, name: str = "guest") -> ChannelConnection:
    """A handshaken connection to the guest (or its helper) at ``path``.

    :raises ChannelClosed: nothing accepts on ``path`` or the guest went away.
    :raises ChannelTimeout: the guest did not answer ``HELLO`` in time.
    :raises VersionMismatch: the guest speaks another protocol version.
    :raises Permanent: ``control.json`` is unreadable or names an unknown transport.
    """
    if os.path.basename(os.fspath(path)) == "control.json":
        from pathlib import Path  # here: exec's fast path avoids pathlib's start-up time

        stream, token = _connect_control_json(Path(path), connect_timeout)
        return ChannelConnection.open(stream, name=name, hello_timeout=hello_timeout,
                                      hello_fields={"token": token})
    return ChannelConnection.open(connect_unix(path, connect_timeout), name=name,
                                  hello_timeout=hello_timeout)


def _connect_control_json(path: Path, timeout: float) -> tuple[SocketStream, str]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ChannelClosed(f"no channel helper: {path} does not exist",
                            "check that the workspace is running") from exc
    except (OSError, ValueError) as exc:
        raise Permanent(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("transport") != "tcp" or ":" not in str(doc.get("address", "")):
        raise Permanent(f"{path} does not describe a tcp control endpoint")
    host, _, port = str(doc["address"]).rpartition(":")
    try:
        import socket  # only for a TCP endpoint: the CLI's exec start-up skips it

        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        raise ChannelClosed(f"cannot connect to the channel helper at {doc['address']}: {exc}",
                            "check that the workspace is running") from exc
    return SocketStream(sock), str(doc.get("token", ""))
