"""A private state root for volume and host-folder tests that boot real QEMU guests.

Its QEMU kernel must carry virtiofs (host folders): the installed one is copied
when it does, else installed again from the same cached Debian package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from support import private_state_root


@pytest.fixture(scope="module")
def vol_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_state_root(tmp_path_factory.mktemp("volstate")) as root:
        yield root
