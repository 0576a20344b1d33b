"""Opening a channel to a guest: connect the transport, then ``HELLO``."""

from __future__ import annotations

import os

from microagent.channel.mux import ChannelConnection
from microagent.channel.stream import connect_unix


def open_channel(path: str | os.PathLike[str], *, hello_timeout: float = 10.0,
                 connect_timeout: float = 10.0, name: str = "guest") -> ChannelConnection:
    """A handshaken connection over the Unix socket at ``path`` (QEMU chardev, agent).

    :raises ChannelClosed: nothing accepts on ``path`` or the guest went away.
    :raises ChannelTimeout: the guest did not answer ``HELLO`` in time.
    :raises VersionMismatch: the guest speaks another protocol version.
    """
    return ChannelConnection.open(connect_unix(path, connect_timeout), name=name,
                                  hello_timeout=hello_timeout)
