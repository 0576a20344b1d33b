"""Paths reach QEMU's command line without being read as options.

QEMU's ``-drive`` syntax splits on commas, so a disk path containing
``,file=/etc/shadow`` would open another file.  The pure test parses every
disk argument as QEMU would; the boot proves a state root with a comma in
its path really works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microagent.paths import host_arch, kernel_dir, state_root
from microagent.supervisors.qemu.argv import qemu_argv
from microagent.vmkit.types import Config, Disk

MICROAGENT = str(Path(sys.executable).parent / "microagent")
HOSTILE = ",file=/etc/shadow,format=raw"


def qemu_opts(text: str) -> list[tuple[str, str]]:
    """QemuOpts' parse: ``,`` separates, ``,,`` is a literal comma."""
    pairs, current, i = [], "", 0
    while i < len(text):
        if text[i] == "," and text[i + 1:i + 2] == ",":
            current, i = current + ",", i + 2
        elif text[i] == ",":
            pairs.append(current.partition("=")[::2])
            current, i = "", i + 1
        else:
            current, i = current + text[i], i + 1
    pairs.append(current.partition("=")[::2])
    return pairs


def opened_files(argv: list[str]) -> list[str]:
    """Every file a ``-drive``/``-blockdev`` argument makes QEMU open."""
    files = []
    for flag, arg in zip(argv, argv[1:]):
        if flag == "-blockdev":
            node = json.loads(arg)
            while isinstance(node, dict) and "file" in node:
                node = node["file"]
            assert isinstance(node, dict) and node["driver"] == "file"
            files.append(node["filename"])
        elif flag == "-drive":
            files += [v for k, v in qemu_opts(arg) if k == "file"]
    return files


def test_commas_in_disk_paths_do_not_become_options(tmp_path: Path) -> None:
    root = f"/state{HOSTILE}"
    cfg = Config(stateDir=root, kernelPath=f"{root}/vmlinux", rootfsPath=f"{root}/ws/rootfs.img",
                 configDiskPath=f"{root}/ws/config.disk",
                 disks=(Disk(name="data,drive=rootfs", path=f"{root}/ws/data,readonly=off.img", mountpoint="/data", mode="ro"),))
    argv = qemu_argv("qemu-system-x86_64", cfg, hostname="ws", accel="tcg")
    assert opened_files(argv) == [cfg.rootfsPath, cfg.disks[0].path, cfg.configDiskPath]
    assert "/etc/shadow" not in opened_files(argv)
    for flag, arg in zip(argv, argv[1:]):
        if flag == "-blockdev":
            doc = json.loads(arg)
            ro = doc["node-name"] in ("disk0", "config")
            assert doc["read-only"] is ro and doc["file"]["read-only"] is ro  # ro disks stay read-only
    devices = [arg for flag, arg in zip(argv, argv[1:]) if flag == "-device" and "drive=" in arg]
    assert [dict(qemu_opts(d))["drive"] for d in devices] == ["rootfs", "disk0", "config"]
    # a disk's name never reaches -device: only the driver and fixed keys of ours
    assert all({k for k, _ in qemu_opts(d)} <= {"virtio-blk-device", "drive", "werror", "rerror"} for d in devices)
    # the kernel and initrd take plain file names (no option syntax): passed as they are
    assert argv[argv.index("-kernel") + 1] == cfg.kernelPath


@pytest.mark.vm
def test_a_state_root_with_a_comma_boots(tmp_path: Path) -> None:
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed (run 'make install')")
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if not (src / "kernel.json").is_file():
        pytest.skip(f"no qemu kernel in {src} (run 'make install')")
    root = tmp_path / f"st{HOSTILE}"
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    proc = subprocess.run([MICROAGENT, "run", "--json", "builtin:busybox", "--", "echo", "booted"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MICROAGENT_STATE_DIR": str(root), "MICROAGENT_BACKEND": "qemu"})
    doc = json.loads(proc.stdout or "{}")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert doc["result"]["stdout"] == "booted\n"
