"""Helpers shared by test packages (on sys.path via pytest's ``pythonpath``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def vmm_processes(marker: str) -> list[str]:
    """``pid args`` lines of live VMM, channel-helper and pasta processes mentioning ``marker``.

    Zombies (state Z: exited, parent has not reaped) are not running and are skipped.
    """
    out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines()[1:]:
        pid, stat, args = (line.strip().split(None, 2) + ["", ""])[:3]
        if stat.startswith("Z") or marker not in args:
            continue
        if ("qemu-system" in args or "firecracker" in args or "microagent.channel.router" in args
                or "pasta.pid" in args):  # pasta names its pid file in the runtime dir
            found.append(f"{pid} {args}")
    return found


def install_test_kernel(root: Path) -> None:
    """This machine's installed QEMU kernel in state root ``root`` (its initramfs is built
    there on first use): copied when it has every guest module, else installed again from
    the cached package (or downloaded) so that it does."""
    from microagent.kernels import install_kernel
    from microagent.kernels.store import KernelRecord, missing_guest_modules
    from microagent.paths import host_arch, kernel_dir, state_root

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


def no_vmm_left(*roots: Path) -> None:
    """Fail when a VMM, channel helper or pasta of any of ``roots`` still runs (killing it first)."""
    leaked = [line for root in roots for line in vmm_processes(str(root))]
    for line in leaked:
        try:
            os.kill(int(line.split()[0]), 9)
        except (ProcessLookupError, ValueError):
            pass
    assert leaked == [], f"VMM processes left running: {leaked}"


@contextmanager
def as_state_root(root: Path) -> Iterator[Path]:
    """``root`` as ``MICROAGENT_STATE_DIR`` for the block; afterwards nothing of it may run."""
    old = os.environ.get("MICROAGENT_STATE_DIR")
    os.environ["MICROAGENT_STATE_DIR"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("MICROAGENT_STATE_DIR", None)
        else:
            os.environ["MICROAGENT_STATE_DIR"] = old
    no_vmm_left(root)


@contextmanager
def private_state_root(root: Path) -> Iterator[Path]:
    """``root`` as the state root of tests that boot real QEMU guests, with the kernel
    installed (:func:`as_state_root`)."""
    if not shutil.which("qemu-system-x86_64"):
        raise AssertionError("qemu-system-x86_64 is not installed (run 'make install')")
    install_test_kernel(root)
    with as_state_root(root):
        yield root
