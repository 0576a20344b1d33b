"""Collect a command's output up to a limit while counting every byte it wrote."""

from __future__ import annotations

import threading
from typing import Any

from microagent.mcp_server.results import ExecOutcome, Output


class CappedSink:
    """An output sink for the channel: keeps the first ``limit`` bytes, counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._kept = bytearray()
        self._lock = threading.Lock()

    def __call__(self, data: bytes) -> None:
        with self._lock:
            room = self.limit - len(self._kept)
            if room > 0:
                self._kept += data[:room]
            self.total += len(data)

    def output(self) -> Output:
        with self._lock:
            return Output(text=bytes(self._kept).decode("utf-8", "replace"), bytes=self.total,
                          truncated=self.total > len(self._kept))


def outcome(result: Any, stdout: CappedSink, stderr: CappedSink) -> dict[str, Any]:
    """The fields of :class:`ExecOutcome` from a channel ``ExecResult`` and the two sinks."""
    error = result.error.get("message") if isinstance(result.error, dict) else None
    return dict(status=result.status, exit_code=result.exit_code, signal=result.signal,
                stdout=stdout.output(), stderr=stderr.output(), error=error)


def exec_outcome(result: Any, stdout: CappedSink, stderr: CappedSink) -> ExecOutcome:
    return ExecOutcome(**outcome(result, stdout, stderr))
