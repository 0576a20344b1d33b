"""A minimal synchronous QMP client (QEMU Machine Protocol over a Unix socket).

Only what the supervisor needs: the capabilities handshake and ``execute``.
Events arriving between replies are skipped.  Connecting through
``/proc/self/fd/<dirfd>/qmp.sock`` keeps long state paths working.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from microagent.errors import Permanent, Transient
from microagent.unixsock import connect_any_length


class QMPClient:
    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            connect_any_length(self.sock, str(path))
        except OSError as exc:
            self.sock.close()
            raise Transient(f"cannot connect to QMP at {path}: {exc}") from exc
        self.file = self.sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise Permanent(f"unexpected QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise Transient("QMP connection closed")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command and return its ``return`` value.

        :raises Permanent: when QEMU answers with an error.
        :raises Transient: when the connection closes first.
        """
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise Permanent(f"qmp {command} failed: {reply['error'].get('desc', reply['error'])}")

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "QMPClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
