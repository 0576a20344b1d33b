"""MCP progress notifications for long calls (image pull, boot).

Progress runs 0 to 100 and only ever grows. A phase that reports nothing
itself (a boot) still ticks every couple of seconds, so a client that resets
its request timeout on progress keeps waiting, and a person sees it is alive.
An image pull reports the share of its layer bytes received.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

T = TypeVar("T")

TICK_S = 2.0


class Progress:
    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._last = -1.0

    async def report(self, value: float, message: str) -> None:
        value = round(min(value, 100.0), 1)
        if value <= self._last:
            return
        self._last = value
        await self._ctx.report_progress(value, 100.0, message)

    def report_from_thread(self, value: float, message: str) -> None:
        try:
            anyio.from_thread.run(self.report, value, message)
        except RuntimeError:
            pass  # the request already ended; nobody is listening

    async def phase(self, start: float, end: float, message: str, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` in a worker thread, ticking from ``start`` toward ``end`` until it returns."""
        await self.report(start, message)
        began = time.monotonic()

        async def tick() -> None:
            while True:
                await anyio.sleep(TICK_S)
                elapsed = time.monotonic() - began
                await self.report(start + (end - start) * (1 - 0.5 ** (elapsed / 10)),
                                  f"{message} ({elapsed:.0f} s)")

        result: list[T] = []
        failure: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            try:
                result.append(await anyio.to_thread.run_sync(fn))
            except Exception as exc:  # re-raised bare below: a task group would wrap it in a group
                failure.append(exc)
            tg.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return result[0]

    def pull(self, start: float, end: float) -> "PullReporter":
        return PullReporter(self, start, end)


class PullReporter:
    """A :class:`~microagent.images.blobs.PullProgress` that maps layer bytes onto ``start..end``."""

    def __init__(self, progress: Progress, start: float, end: float) -> None:
        self._progress = progress
        self._start, self._end = start, end
        self._total = 0
        self._done = 0
        self._sent_at = 0.0

    def on_layer_start(self, digest: str, size: int) -> None:
        self._total += max(size, 0)

    def on_bytes(self, digest: str, n: int) -> None:
        self._done += n
        now = time.monotonic()
        if now - self._sent_at >= 0.5 and self._total:
            self._sent_at = now
            share = min(max(self._done / self._total, 0.0), 1.0)
            self._progress.report_from_thread(self._start + (self._end - self._start) * share,
                                              f"pulling image: {self._done >> 20} of {self._total >> 20} MiB")

    def on_layer_done(self, digest: str) -> None:
        pass
