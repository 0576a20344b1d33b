"""A private state root for tests that boot real QEMU guests (``test_vm_*``, marked ``vm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from support import private_state_root


@pytest.fixture(scope="module")
def vm_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_state_root(tmp_path_factory.mktemp("svcstate")) as root:
        yield root
