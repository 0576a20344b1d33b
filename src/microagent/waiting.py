"""Polling: wait until something becomes true, within a deadline.

Many things microagent waits for (a process gone, a lock free, a socket or an
interface present, a workspace leaving a state) announce themselves in no way
a caller could block on, so they are polled.  :func:`wait_until` is that loop,
written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float | None, interval: float) -> T | None:
    """Call ``predicate`` every ``interval`` seconds until it returns something true.

    :param timeout: seconds to keep trying; ``None`` waits as long as it takes.
    :returns: the first true value ``predicate`` returned, or ``None`` once
        ``timeout`` seconds have passed without one.  ``predicate`` is always
        called at least once, and once more at the deadline.
    :raises: whatever ``predicate`` raises (the way to give up early, e.g. when
        the process being waited for has exited).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if deadline is None:
            time.sleep(interval)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(interval, left))
