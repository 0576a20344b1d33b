"""``wait_until``: the one polling loop (its return and raise contract)."""

from __future__ import annotations

import time

import pytest

from microagent.waiting import wait_until


def test_returns_the_first_true_value() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(answers), 5.0, 0.001) == "ready"


def test_returns_none_once_the_timeout_passes_and_asks_once_more_at_the_deadline() -> None:
    asked: list[float] = []
    t0 = time.monotonic()
    assert wait_until(lambda: asked.append(time.monotonic()) or False, 0.2, 0.05) is None
    assert 0.2 <= time.monotonic() - t0 < 1.0
    assert asked[-1] - t0 >= 0.2  # the last check is at the deadline, not one interval before it
    assert 3 <= len(asked) <= 6


def test_a_zero_timeout_asks_exactly_once() -> None:
    asked: list[int] = []
    assert wait_until(lambda: asked.append(1), 0, 10.0) is None
    assert asked == [1]


def test_no_timeout_waits_as_long_as_it_takes() -> None:
    answers = iter([False] * 5 + [True])
    assert wait_until(lambda: next(answers), None, 0.001) is True


def test_what_the_predicate_raises_ends_the_wait() -> None:
    def gone() -> bool:
        raise ProcessLookupError("exited")

    with pytest.raises(ProcessLookupError):
        wait_until(gone, 10.0, 0.01)
