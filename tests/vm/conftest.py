"""Fixtures for real VM boots under QEMU.

The session state root is a temp dir; the kernel comes from the default
state root when ``make install`` put it there (else it is installed from
Debian's package).  After the session no QEMU process may mention the temp
state root: the suite asserts it leaks nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from support import private_state_root


@pytest.fixture(scope="session")
def vm_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_state_root(tmp_path_factory.mktemp("vmstate")) as root:
        yield root
