"""A private state root for volume and host-folder tests that boot real QEMU guests.

Its QEMU kernel must carry virtiofs (host folders): the installed one is copied
when it does, else installed again from the same cached Debian package.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from microagent.paths import host_arch, kernel_dir, state_root
from support import vmm_processes


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/volumes/test_vm_" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


def _install_kernel(root: Path) -> None:
    from microagent.kernels import install_kernel
    from microagent.kernels.store import KernelRecord, missing_guest_modules

    src = kernel_dir(state_root(None), "qemu", host_arch())
    dst = kernel_dir(root, "qemu", host_arch())
    if (src / "kernel.json").is_file():
        record = KernelRecord.from_json(json.loads((src / "kernel.json").read_text()), src)
        if not missing_guest_modules(record):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("initramfs-*"))
            return
        source = record.source
        deb = state_root(None) / "cache" / "debs" / \
            f"{source.get('package')}_{source.get('version')}_{source.get('architecture')}.deb"
        if deb.is_file():
            install_kernel(root, "qemu", deb=deb)
            return
    install_kernel(root, "qemu")


@pytest.fixture(scope="module")
def vol_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed (run 'make install')")
    root = tmp_path_factory.mktemp("volstate")
    _install_kernel(root)
    old = os.environ.get("MICROAGENT_STATE_DIR")
    os.environ["MICROAGENT_STATE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("MICROAGENT_STATE_DIR", None)
    else:
        os.environ["MICROAGENT_STATE_DIR"] = old
    leaked = vmm_processes(str(root))
    for line in leaked:
        try:
            os.kill(int(line.split()[0]), 9)
        except (ProcessLookupError, ValueError):
            pass
    assert leaked == [], f"VMM processes left running: {leaked}"
