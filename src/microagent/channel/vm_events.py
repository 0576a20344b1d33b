"""Why a VM is paused, from its VMM's QMP events (run inside the channel helper).

QEMU stops the vcpus when a disk write hits ENOSPC (``werror=enospc``): the
guest's data stays intact and the write is retried on ``cont``.  The helper
holds a second QMP monitor (``qmp-events.sock``; the first stays free for
the supervisor), asks ``query-status`` once on connect, then follows
``BLOCK_IO_ERROR`` and ``RESUME`` events.  While the VM is paused for lack
of space the helper refuses new sessions at once with ``resource_exhausted``
instead of letting them hang, and marks the workspace ``paused`` in its
record (:func:`mark_paused`: best effort, the disk being full).
"""

from __future__ import annotations

import _socket
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and pathlib cost the channel helper memory (one per workspace)
    from typing import Any

from microagent import jsonlite  # json, socket: memory in every helper (microagent.channel.router)
from microagent.fsutil import atomic_write, overwrite_in_place
from microagent.unixsock import connect_any_length

HOST_DISK_FULL = "host disk full"
DISK_IO_ERROR = "disk I/O error"
MAX_LINE = 1 << 20
"""Longest QMP message kept (QEMU's are a few hundred bytes); a longer one is dropped unread."""


def pause_reason(status: dict[str, Any], devices: list[dict[str, Any]]) -> str | None:
    """The reason from ``query-status`` and ``query-block`` answers (``None``: not paused for an error)."""
    if status.get("status") != "io-error":
        return None
    return HOST_DISK_FULL if any(d.get("io-status") == "nospace" for d in devices) else DISK_IO_ERROR


def paused_detail(name: str, reason: str) -> str:
    """What a workspace the VMM paused on its own says, with the way out."""
    if reason == HOST_DISK_FULL:
        return (f"paused: host disk full (the VM's disk writes wait for space; no data lost); "
                f"free space on the disk holding the state directory, then 'microagent resume {name}'")
    return f"paused: {reason}; see vmm.log, then 'microagent resume {name}' or kill it"


def mark_paused(runtime_dir: str, reason: str) -> None:
    """Record in ``runtime.json`` and ``event.json`` that the VMM paused the VM on its own.

    Best effort: the disk may be full, so what fits in the files' blocks is
    written in place; the supervisor's next inspect asks QEMU anyway.
    """
    runtime_path = os.path.join(runtime_dir, "runtime.json")
    runtime = _read(runtime_path)
    if runtime.get("state") not in ("running", "starting"):
        return
    from microagent.vmkit.basics import now_rfc3339  # re: here, on a pause, not in every helper

    observed_at = now_rfc3339()
    runtime.update(state="paused", pausedFrom=runtime["state"], pausedReason=reason, updatedAt=observed_at)
    _write(runtime_path, runtime)
    event_path = os.path.join(runtime_dir, "event.json")
    event = _read(event_path)
    if event:
        event.update(state="paused", detail=paused_detail(os.path.basename(runtime_dir), reason),
                     observedAt=observed_at)
        _write(event_path, event)


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = jsonlite.loads(fh.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: str, data: dict[str, Any]) -> None:
    import json  # the records' own layout (indented, sorted), written only on a pause

    payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
    try:
        atomic_write(path, payload)
    except OSError:
        overwrite_in_place(path, payload)


class PauseWatcher:
    """One QMP monitor connection: ``reason`` is why the VM is paused, or ``None``."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self._buf = b""
        self.reason: str | None = None
        try:
            connect_any_length(self.sock, path)
            self._next()  # greeting
            self._call("qmp_capabilities")
            status = self._call("query-status")
            devices = self._call("query-block") if status.get("status") == "io-error" else []
            self.reason = pause_reason(status, devices)
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _next(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP monitor closed")
            self._buf += chunk
            if len(self._buf) > MAX_LINE and b"\n" not in self._buf:
                raise ConnectionError(f"QMP message longer than {MAX_LINE} bytes")
        line, self._buf = self._buf.split(b"\n", 1)
        msg = jsonlite.loads(line.decode("utf-8"))
        if not isinstance(msg, dict):
            raise ConnectionError(f"QMP sent {type(msg).__name__}, not an object")
        return msg

    def _call(self, command: str) -> Any:
        self.sock.sendall(jsonlite.dumps({"execute": command}).encode() + b"\n")
        while True:
            msg = self._next()
            if "event" in msg:
                self._on_event(msg)
            elif "return" in msg:
                return msg["return"]
            elif "error" in msg:
                raise ConnectionError(f"qmp {command}: {msg['error']}")

    def _on_event(self, msg: dict[str, Any]) -> None:
        data = msg.get("data") or {}
        if msg["event"] == "BLOCK_IO_ERROR" and data.get("action") == "stop":
            self.reason = HOST_DISK_FULL if data.get("nospace") else DISK_IO_ERROR
        elif msg["event"] == "RESUME":
            self.reason = None

    def on_readable(self) -> bool:
        """Take in what arrived; ``False`` once the monitor closed (QEMU exited)."""
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            chunk = b""
        if not chunk:
            return False
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                msg = jsonlite.loads(line.decode("utf-8"))
            except ValueError:  # UnicodeDecodeError included
                continue
            if isinstance(msg, dict) and "event" in msg:
                self._on_event(msg)
        if len(self._buf) > MAX_LINE:
            self._buf = b""  # no end in sight: what follows the next newline is read again
        return True

    def close(self) -> None:
        self.sock.close()
