"""Collects the contract harnesses: every ``harness_*.py`` here defines ``HARNESS``.

The ``harness`` fixture is parametrized over them (test ids are backend
names) and gives each test a fresh instance (its own state directory),
closed afterwards.  See README.md for the interface.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator

import pytest

from contract.base import Harness

HERE = Path(__file__).resolve().parent


def _harness_classes() -> list[type[Harness]]:
    found = []
    for path in sorted(HERE.glob("harness_*.py")):
        module = importlib.import_module(f"contract.{path.stem}")
        found.append(module.HARNESS)
    return found


HARNESSES = _harness_classes()


@pytest.fixture(params=HARNESSES, ids=[h.name for h in HARNESSES])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    instance = request.param(tmp_path)
    try:
        yield instance
    finally:
        instance.close()
