"""The apple-vf guest is aarch64: the real arm64 kernel and the aarch64 init, never x86_64 ones.

The kernel is Debian's arm64 cloud kernel installed for ``apple-vf``
(``kernels/apple-vf/aarch64``: its initramfs loads ``virtio_pci``, VZ's
transport), the initramfs the one a boot builds around
``src/microagent/guest/aarch64/microagent-init``.  The configuration is
``FakeVirtualization``'s (needs macOS to go further).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from applevf.fake_vz import FakeVirtualization, describe
from applevf.harness import AppleVF, aarch64_guest_files

from microagent.errors import Permanent
from microagent.guestinit import find_guest_init
from microagent.kernels import build_initramfs
from microagent.kernels.vmlinux import kernel_architecture
from microagent.paths import kernel_dir, package_root, state_root
from microagent.supervisors.applevf.guest_files import (
    check_guest_files,
    initramfs_init_architecture,
)
from microagent.supervisors.applevf.vzconfig import build_configuration, vm_spec
from microagent.vmkit.types import parse_request


@pytest.fixture(scope="module")
def real_files() -> tuple[Path, Path]:
    return aarch64_guest_files()


@pytest.fixture(scope="module")
def x86_kernel() -> Path:
    image = kernel_dir(state_root(None), "qemu", "x86_64") / "Image"
    if not image.is_file():
        from microagent.kernels import install_kernel

        install_kernel(state_root(None), "qemu", arch="x86_64")
    return image


def test_the_files_are_the_aarch64_kernel_and_init(real_files: tuple[Path, Path]) -> None:
    kernel, initrd = real_files
    assert kernel.parent.parts[-3:] == ("kernels", "apple-vf", "aarch64")
    assert kernel_architecture(kernel) == "aarch64"
    record = json.loads((kernel.parent / "kernel.json").read_text())
    assert "virtio_pci" in [m["name"] for m in record["modules"]]  # VZ's virtio transport is PCI
    init = find_guest_init("aarch64")
    assert init == package_root() / "guest" / "aarch64" / "microagent-init"
    assert initramfs_init_architecture(initrd) == "aarch64"
    assert init.read_bytes() in initrd.read_bytes()


def test_configuration_names_the_real_files(real_files: tuple[Path, Path], fake_vz: FakeVirtualization,
                                            tmp_path: Path) -> None:
    kernel, initrd = real_files
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"\0" * 4096)
    request = parse_request({"command": "start", "identity": {
        "requestID": "r", "runtimeID": "ws1", "role": "workload", "backend": "apple-vf"},
        "config": {"stateDir": str(tmp_path), "kernelPath": str(kernel), "initrdPath": str(initrd),
                   "rootfsPath": str(rootfs), "memoryMiB": 512, "cpuCount": 2}})
    assert request.config is not None
    boot = describe(build_configuration(fake_vz, vm_spec(request.config, "ws1", os.devnull)))["bootLoader"]
    assert boot["init"] == ["initWithKernelURL_", [f"file://{kernel}"]]
    assert boot["initialRamdiskURL"] == f"file://{initrd}"


def test_supervisor_starts_with_the_real_files_and_reports_the_init(applevf: AppleVF,
                                                                    real_files: tuple[Path, Path]) -> None:
    kernel, initrd = real_files
    started = applevf.call("start", kernelPath=str(kernel), initrdPath=str(initrd))
    assert started["ok"], started
    spec = json.loads((applevf.runtime() / "applevf.json").read_text())
    assert (spec["kernel"], spec["initrd"]) == (str(kernel), str(initrd))
    assert applevf.call("kill")["ok"]
    host = applevf.call("host")["host"]
    assert host["guestInitPath"] == str(find_guest_init("aarch64")) and host["guestInitAvailable"]


def test_x86_64_kernel_is_refused_before_anything_starts(applevf: AppleVF, x86_kernel: Path) -> None:
    for command in ("check", "start"):
        answer = applevf.call(command, kernelPath=str(x86_kernel))
        err = answer["error"]
        assert err["kind"] == "permanent", answer
        assert "aarch64 guests only" in err["message"] and "x86_64" in err["message"]
        assert "kernel install --backend apple-vf --arch aarch64" in err["remediation"]
        assert not applevf.runtime().exists()


def test_x86_64_init_is_refused(applevf: AppleVF, tmp_path: Path) -> None:
    x86_initrd = build_initramfs(find_guest_init("x86_64"), [], tmp_path / "x86-initramfs.cpio")
    answer = applevf.call("start", initrdPath=str(x86_initrd))
    assert answer["error"]["kind"] == "permanent", answer
    assert "guest init" in answer["error"]["message"] and "x86_64" in answer["error"]["message"]
    assert not applevf.runtime().exists()


def test_initrd_without_an_init_is_refused(real_files: tuple[Path, Path], tmp_path: Path) -> None:
    kernel, _ = real_files
    for name, data in (("zeros", b"\0" * 4096), ("gzip", b"\x1f\x8b\x08" + b"\0" * 100)):
        bogus = tmp_path / name
        bogus.write_bytes(data)
        with pytest.raises(Permanent, match="has no /init"):
            check_guest_files(str(kernel), str(bogus))
    empty_cpio = build_initramfs(find_guest_init("aarch64"), [], tmp_path / "ok.cpio")
    check_guest_files(str(kernel), str(empty_cpio))  # no modules: still an aarch64 init
