"""Durations that come from outside input: timeouts and grace periods.

A duration must be a finite number of seconds, not negative, and at most
:data:`MAX_SECONDS`: ``nan`` compares false with everything (a deadline
loop never ends), ``inf`` overflows ``time.monotonic() + t`` arithmetic
in ``select``/``socket.settimeout``, and a negative value means nothing.
Every edge (CLI, SDK, library entry points) checks with :func:`seconds`.
"""

from __future__ import annotations

from microagent.errors import Permanent

#: 30 days: longer than any workspace command should wait; bigger values are typos.
MAX_SECONDS = 30 * 24 * 3600.0


def seconds(value: float | int | str, what: str = "timeout") -> float:
    """``value`` as a validated number of seconds.

    :param value: a number, or its decimal text (CLI input).
    :param what: the option's name, for the message (``--timeout``).
    :raises Permanent: not a number, ``nan``/``inf``, negative, or above :data:`MAX_SECONDS`.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Permanent(f"{what} must be a number of seconds, not {value!r}",
                        "give a decimal number such as 30 or 2.5") from None
    import math  # here: a command without a timeout (most CLI execs) never loads it

    if not math.isfinite(number) or number < 0 or number > MAX_SECONDS:
        raise Permanent(f"{what} must be between 0 and {int(MAX_SECONDS)} seconds, not {value!r}",
                        "give a finite, non-negative number of seconds such as 30 or 2.5")
    return number


def optional_seconds(value: float | int | str | None, what: str = "timeout") -> float | None:
    """Like :func:`seconds`, with ``None`` meaning "no limit"."""
    return None if value is None else seconds(value, what)
