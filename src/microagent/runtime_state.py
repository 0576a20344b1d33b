"""The runtime directory of one workspace: ``<stateDir>/<name>/``.

Owns the files a supervisor writes there (DESIGN.md §4, docs/state.md):
``runtime.json`` (pid, sockets, config), ``event.json`` (latest event),
``events.jsonl`` (append-only timeline), ``serial.log``, ``result.json``.
Every JSON write is atomic (temp file + fsync + rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microagent.vmkit.types import Event, Identity, to_wire


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        return None


@dataclass(frozen=True)
class RuntimeDir:
    path: Path

    @property
    def runtime_json(self) -> Path:
        return self.path / "runtime.json"

    @property
    def event_json(self) -> Path:
        return self.path / "event.json"

    @property
    def events_log(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def serial_log(self) -> Path:
        return self.path / "serial.log"

    @property
    def vmm_log(self) -> Path:
        return self.path / "vmm.log"

    @property
    def result_json(self) -> Path:
        return self.path / "result.json"

    @property
    def channel_socket(self) -> Path:
        return self.path / "channel.sock"

    @property
    def control_socket(self) -> Path:
        return self.path / "control.sock"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def record(self, identity: Identity, state: str, detail: str = "", **runtime_updates: Any) -> Event:
        """Set the workspace's state: ``runtime.json`` updated, then the event logged."""
        event = Event(identity=identity, state=state, detail=detail)
        runtime = self.runtime() or {}
        runtime.update(runtime_updates)
        runtime["state"] = state
        runtime["updatedAt"] = event.observedAt
        self.write_runtime(runtime)
        self.record_event(event)
        return event

    def record_event(self, event: Event) -> None:
        """Write ``event.json`` and append the event to ``events.jsonl``."""
        doc = to_wire(event)
        write_json_atomic(self.event_json, doc)
        with open(self.events_log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, sort_keys=True) + "\n")

    def runtime(self) -> dict[str, Any] | None:
        data = read_json(self.runtime_json)
        return data if isinstance(data, dict) else None

    def write_runtime(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.runtime_json, data)

    def serial_tail(self, lines: int = 20) -> str:
        try:
            with open(self.serial_log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 8192))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])
