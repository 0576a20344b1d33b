"""The egress decision log: one JSON line per connection, in the runtime directory.

``egress.log`` (0600) is appended by the helper's proxy threads and rotated
to ``egress.log.1`` once it passes the cap, so both together stay under
about twice the cap whatever the guest does.  ``microagent egress log``
reads it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from microagent.fsutil import PRIVATE_FILE_MODE

#: bytes of egress.log before it is rotated
DEFAULT_CAP = 4 << 20
LOG_NAME = "egress.log"


class AuditLog:
    """Appends decision records; safe to share between threads."""

    def __init__(self, path: Path, workspace: str, cap: int = DEFAULT_CAP) -> None:
        self.path = path
        self.workspace = workspace
        self.cap = cap
        self._lock = threading.Lock()

    def write(self, **record: Any) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "workspace": self.workspace, **record}, sort_keys=False) + "\n"
        with self._lock:
            try:
                if self.path.stat().st_size + len(line) > self.cap:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            except FileNotFoundError:
                pass
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


def read_records(runtime_dir: Path) -> list[dict[str, Any]]:
    """Every record still kept (the rotated file first), oldest first; torn lines skipped."""
    out: list[dict[str, Any]] = []
    for path in (runtime_dir / (LOG_NAME + ".1"), runtime_dir / LOG_NAME):
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        out.extend(_parse_lines(text))
    return out


def follow(runtime_dir: Path, poll_s: float = 0.25) -> Iterator[dict[str, Any]]:
    """Records appended to ``egress.log`` from this call on (across rotations), until interrupted."""
    path = runtime_dir / LOG_NAME
    return _follow(path, path.stat().st_size if path.exists() else 0, poll_s)


def _follow(path: Path, offset: int, poll_s: float) -> Iterator[dict[str, Any]]:
    partial = ""
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < offset:  # rotated: the new file starts from zero
            offset, partial = 0, ""
        if size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read(size - offset)
            offset += len(chunk)
            *lines, partial = (partial + chunk.decode(errors="replace")).split("\n")
            yield from _parse_lines("\n".join(lines))
        else:
            time.sleep(poll_s)


def _parse_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def format_record(r: dict[str, Any]) -> str:
    """One line for people: time, decision, where to, bytes, why."""
    where = f"{r.get('host')}:{r.get('port')}"
    if r.get("address"):
        where += f" ({r['address']})"
    text = f"{r.get('time')} {str(r.get('decision')).upper():7} {r.get('method', '')} {where}"
    if r.get("decision") == "allowed" or r.get("bytesSent") or r.get("bytesReceived"):
        text += f" sent={r.get('bytesSent', 0)} received={r.get('bytesReceived', 0)}"
    if r.get("reason"):
        text += f": {r['reason']}"
    return text
