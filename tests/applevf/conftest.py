"""Fixtures for the apple-vf backend, tested on Linux against ``FakeVirtualization``.

- ``fake_vz``: a fresh :class:`applevf.fake_vz.FakeVirtualization`.
- ``vm_files``: the real aarch64 kernel and initramfs (linked under ``tmp_path``,
  installed once per machine: :func:`applevf.harness.aarch64_guest_files`), dummy disks.
- ``guest_init``: the built ``microagent-init`` (the fake VM's guest runs it
  in agent mode), or a skip saying it is not built.
- ``applevf``: an :class:`applevf.harness.AppleVF` (the real backend
  in-process, the real vmhost process against the fake).  After each test no
  process whose arguments mention its state directory may be left alive.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from applevf.fake_vz import FakeVirtualization
from applevf.harness import FAKE_VMHOST, AppleVF, VMFiles, find_guest_init, kill_leftovers


@pytest.fixture
def fake_vz() -> FakeVirtualization:
    return FakeVirtualization()


@pytest.fixture
def vm_files(tmp_path: Path) -> VMFiles:
    return VMFiles.create(tmp_path / "files")


@pytest.fixture(scope="session")
def guest_init() -> Path:
    path = find_guest_init()
    if path is None:
        pytest.skip("guest init is not built; run 'make guest'")
    return path


@pytest.fixture
def applevf(tmp_path: Path, vm_files: VMFiles, guest_init: Path) -> Iterator[AppleVF]:
    state = tmp_path / "state"
    state.mkdir()
    harness = AppleVF(state, vm_files, [sys.executable, str(FAKE_VMHOST), "--guest-init", str(guest_init)])
    yield harness
    time.sleep(0.05)
    left = kill_leftovers(str(state))
    assert not left, f"processes left behind: {left}"
