"""A private state root for snapshot tests that boot real QEMU guests (marked ``vm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from support import private_state_root


@pytest.fixture(scope="module")
def snap_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_state_root(tmp_path_factory.mktemp("snapstate")) as root:
        yield root
