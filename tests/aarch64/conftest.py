"""Fixtures for aarch64 guests emulated by QEMU's TCG on this host.

The kernel comes from the default state root when ``make install`` put it
there, else it is installed from Debian's arm64 package (which needs the arm64
architecture enabled in dpkg: scripts/host-deps.sh).  Each boot module boots
once (TCG emulation makes boots the cost).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import as_state_root

from microagent.paths import kernel_dir, state_root

ARCH = "aarch64"
# read at collection, before any fixture points MICROAGENT_STATE_DIR at a temp root
DEFAULT_ROOT = state_root(None)


@pytest.fixture(scope="session")
def default_state_root() -> Path:
    """The user's state root (kernels and the .deb cache ``make install`` filled)."""
    return DEFAULT_ROOT


@pytest.fixture(scope="session")
def aarch64_kernel_dir() -> Path:
    """The installed aarch64 QEMU kernel (installed from Debian's package when missing)."""
    from microagent.kernels import install_kernel

    src = kernel_dir(DEFAULT_ROOT, "qemu", ARCH)
    if not (src / "kernel.json").is_file():
        install_kernel(DEFAULT_ROOT, "qemu", arch=ARCH)
    return src


@pytest.fixture(scope="module")
def a64_state(tmp_path_factory: pytest.TempPathFactory, aarch64_kernel_dir: Path) -> Iterator[Path]:
    if not shutil.which("qemu-system-aarch64"):
        pytest.fail("qemu-system-aarch64 is not installed (run 'make install': qemu-system-arm)")
    root = tmp_path_factory.mktemp("a64state")
    shutil.copytree(aarch64_kernel_dir, kernel_dir(root, "qemu", ARCH),
                    ignore=shutil.ignore_patterns("initramfs-*"))
    with as_state_root(root):
        yield root
