"""Secret values in the egress helper's memory, and the socket that hands them over.

Values never touch a file: the host process that starts a workspace (or
``microagent egress set --secret``) reads them from their sources and writes
them to ``secrets.sock`` in the runtime directory (a directory only this user
can enter; the peer's uid is checked too), where the helper keeps them in
memory.  The socket only takes values; nothing reads them back.  A helper
that is started again (the old one died) has none until they are supplied
again: the proxy then refuses requests that need one, saying so.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from microagent.errors import InvalidRequest, MicroagentError, Transient

SOCKET_NAME = "secrets.sock"
#: a supply message at most (32 secrets of 16 KiB, JSON-escaped)
MAX_MESSAGE_BYTES = 4 << 20
#: the first seconds of a helper, when a request needing a value waits for it (the start
#: that spawned the helper supplies the values just after the guest answered)
FIRST_SUPPLY_WAIT_S = 10.0
IO_TIMEOUT_S = 10.0


class Vault:
    """Secret values by name, as bytes ready for a header; shared by the proxy's threads."""

    def __init__(self, wait_s: float = FIRST_SUPPLY_WAIT_S) -> None:
        self._values: dict[str, bytes] = {}
        self._supplied = False
        self._cond = threading.Condition()
        self._wait_until = time.monotonic() + wait_s

    def supply(self, values: Mapping[str, str]) -> None:
        """Add or replace values (names not given keep theirs)."""
        from microagent.egress.secrets import check_value

        encoded = {}
        for name, value in values.items():
            check_value(str(name), str(value))
            encoded[str(name)] = str(value).encode("latin-1")
        with self._cond:
            self._values.update(encoded)
            self._supplied = True
            self._cond.notify_all()

    def value(self, name: str) -> bytes | None:
        """The value of ``name``; in the helper's first seconds, waits for the first supply.
        ``None``: not supplied (a helper started again after its workspace's start)."""
        with self._cond:
            if not self._supplied:
                self._cond.wait_for(lambda: self._supplied, timeout=max(0.0, self._wait_until - time.monotonic()))
            return self._values.get(name)

    def names(self) -> list[str]:
        with self._cond:
            return sorted(self._values)


def serve(path: Path, vault: Vault, log: object = None) -> socket.socket:
    """Listen on ``path`` (0600) and feed ``vault`` from a daemon thread; returns the socket."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(4)

    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                _handle(conn, vault, log)

    threading.Thread(target=loop, daemon=True, name="egress-vault").start()
    return sock


def _handle(conn: socket.socket, vault: Vault, log: object) -> None:
    try:
        conn.settimeout(IO_TIMEOUT_S)
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid not in (os.getuid(), 0):
            raise InvalidRequest(f"uid {uid} may not supply secrets")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
            if len(data) > MAX_MESSAGE_BYTES:
                raise InvalidRequest("secret message too large")
        doc = json.loads(data)
        values = doc.get("values") if isinstance(doc, dict) else None
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise InvalidRequest('expected {"values": {NAME: VALUE}}')
        vault.supply(values)
        answer = {"ok": True, "names": vault.names()}
    except (OSError, ValueError, MicroagentError) as exc:
        # the message of a failed check names a secret, never its value
        answer = {"ok": False, "error": str(exc) if isinstance(exc, MicroagentError) else type(exc).__name__}
        if callable(log):
            log(f"egress: a secret supply was refused: {answer['error']}")
    try:
        conn.sendall(json.dumps(answer).encode() + b"\n")
    except OSError:
        pass


def supply(runtime_dir: Path, values: Mapping[str, str], workspace: str = "") -> list[str]:
    """Hand ``values`` to the running helper of the workspace at ``runtime_dir``.

    :returns: the names the helper now holds.
    :raises Transient: no helper listens (the workspace is not running), or it did not answer.
    :raises InvalidRequest: the helper refused the values.
    """
    path = runtime_dir / SOCKET_NAME
    what = workspace or str(runtime_dir)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(IO_TIMEOUT_S)
            sock.connect(str(path))
            sock.sendall(json.dumps({"values": dict(values)}).encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        answer = json.loads(data)
    except (OSError, ValueError) as exc:
        raise Transient(f"cannot hand the secrets to the egress proxy of {what}: "
                        f"{getattr(exc, 'strerror', None) or type(exc).__name__}",
                        f"is {what} running? 'microagent egress set {what} --secret ...' supplies them "
                        "to a running workspace; a start supplies them too") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise InvalidRequest(f"the egress proxy of {what} refused the secrets: "
                             f"{answer.get('error') if isinstance(answer, dict) else answer}",
                             "check the secret values' sources")
    return [str(n) for n in answer.get("names") or ()]
