"""Pull progress on a terminal, for ``image pull`` and ``run``: per-layer bars with rich on
stderr when it is a TTY, nothing in ``--json`` or non-TTY mode. Free of click: a plain
``run`` never loads it (:mod:`.main`).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs CLI start-up time; mypy reads this block
    from typing import Any


class TerminalProgress:
    """Per-layer progress bars on stderr. rich (50 ms of imports) loads at the first
    layer: a run of a cached image pulls none."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def _bars(self) -> Any:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                console=Console(file=sys.stderr), transient=False,
            )
            self._progress.start()
        return self._progress

    def on_layer_start(self, digest: str, size: int) -> None:
        label = digest.split(":", 1)[-1][:12]
        self._tasks[digest] = self._bars().add_task(label, total=size if size >= 0 else None)

    def on_bytes(self, digest: str, n: int) -> None:
        task = self._tasks.get(digest)
        if task is not None:
            self._progress.advance(task, n)

    def on_layer_done(self, digest: str) -> None:
        task = self._tasks.get(digest)
        if task is not None:
            total = self._progress.tasks[task].total
            if total is not None:
                self._progress.update(task, completed=total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()


def pull_progress(as_json: bool) -> TerminalProgress | None:
    """A progress renderer when stderr is a terminal and output is not JSON, else ``None``."""
    if as_json or os.environ.get("MICROAGENT_OUTPUT") == "json" or not sys.stderr.isatty():
        return None
    from importlib.util import find_spec

    if find_spec("rich") is None:  # rich missing: progress is a nicety
        return None
    return TerminalProgress()
