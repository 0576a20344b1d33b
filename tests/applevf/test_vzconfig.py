"""The exact configuration the apple-vf backend hands Virtualization.framework (a fake of it).

``FakeVirtualization`` accepts only the real selectors (PyObjC spelling) and
records every call; :func:`applevf.fake_vz.describe` renders the resulting
``VZVirtualMachineConfiguration`` as a tree.  Needs macOS to go further:
whether the real framework accepts it (``validateWithError_`` here is the fake's).
"""

from __future__ import annotations

import fcntl
import os
import plistlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from applevf.fake_vz import FakeVirtualization, describe
from applevf.harness import VMFiles
from microagent.errors import NotFound, Permanent, PolicyDenied
from microagent.supervisors.applevf.vzconfig import build_configuration, mac_address, vm_spec
from microagent.vmkit.types import Config, parse_request

MIB = 1024 * 1024


def _config(files: VMFiles, **overrides: Any) -> Config:
    cfg: dict[str, Any] = {"stateDir": str(files.root), "kernelPath": str(files.kernel),
                           "initrdPath": str(files.initrd), "rootfsPath": str(files.rootfs),
                           "memoryMiB": 512, "cpuCount": 2}
    cfg.update(overrides)
    request = parse_request({"command": "start", "config": cfg, "identity": {
        "requestID": "r", "runtimeID": "ws1", "role": "workload", "backend": "apple-vf"}})
    assert request.config is not None
    return request.config


def _build(vz: FakeVirtualization, files: VMFiles, **overrides: Any) -> dict[str, Any]:
    spec = vm_spec(_config(files, **overrides), "ws1", str(files.root / "serial.log"))
    return describe(build_configuration(vz, spec))  # type: ignore[no-any-return]


def _disk(path: Path, read_only: bool) -> dict[str, Any]:
    return {"class": "VZVirtioBlockDeviceConfiguration", "init": ["initWithAttachment_", [
        {"class": "VZDiskImageStorageDeviceAttachment",
         "init": ["initWithURL_readOnly_error_", [f"file://{path}", read_only, None]]}]]}


def test_isolated_exact_configuration(fake_vz: FakeVirtualization, vm_files: VMFiles) -> None:
    tree = _build(fake_vz, vm_files)
    serial_attachment = tree["serialPorts"][0]["attachment"]
    fd = serial_attachment["init"][1][1]["init"][1][0]
    assert tree == {
        "class": "VZVirtualMachineConfiguration", "init": ["init", []],
        "CPUCount": 2,
        "memorySize": 512 * MIB,
        "bootLoader": {
            "class": "VZLinuxBootLoader", "init": ["initWithKernelURL_", [f"file://{vm_files.kernel}"]],
            "initialRamdiskURL": f"file://{vm_files.initrd}",
            "commandLine": "console=hvc0 microagent.root=/dev/vda microagent.channel=vsock:1024 "
                           "microagent.hostname=ws1 microagent.shutdown=poweroff",
        },
        "storageDevices": [_disk(vm_files.rootfs, False)],
        "socketDevices": [{"class": "VZVirtioSocketDeviceConfiguration", "init": ["init", []]}],
        "networkDevices": [],  # isolated: no device at all
        "serialPorts": [{
            "class": "VZVirtioConsoleDeviceSerialPortConfiguration", "init": ["init", []],
            "attachment": {"class": "VZFileHandleSerialPortAttachment",
                           "init": ["initWithFileHandleForReading_fileHandleForWriting_", [
                               None,  # no read handle: the console takes no input
                               {"class": "NSFileHandle", "init": ["initWithFileDescriptor_closeOnDealloc_",
                                                                  [fd, True]]}]]}}],
        "entropyDevices": [{"class": "VZVirtioEntropyDeviceConfiguration", "init": ["init", []]}],
        "memoryBalloonDevices": [{"class": "VZVirtioTraditionalMemoryBalloonDeviceConfiguration",
                                  "init": ["init", []]}],
    }
    # the console's write handle appends to serial.log
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
    assert os.readlink(f"/proc/self/fd/{fd}") == str(vm_files.root / "serial.log")
    os.close(fd)
    assert fake_vz.selectors("VZVirtualMachineConfiguration")[-1] == "validateWithError_"


@pytest.mark.parametrize("mode", ["nat", "user"])
def test_nat_and_user_are_a_nat_attachment(fake_vz: FakeVirtualization, vm_files: VMFiles, mode: str) -> None:
    tree = _build(fake_vz, vm_files, network={"mode": mode})
    assert tree["networkDevices"] == [{
        "class": "VZVirtioNetworkDeviceConfiguration", "init": ["init", []],
        "attachment": {"class": "VZNATNetworkDeviceAttachment", "init": ["init", []]},
        "MACAddress": {"class": "VZMACAddress", "init": ["initWithString_", [mac_address("ws1")]]},
    }]
    mac = mac_address("ws1")
    assert int(mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast
    assert "VZBridgedNetworkDeviceAttachment" not in {c for c, _, _ in fake_vz.calls}


def test_bridged_is_refused_with_policy_denied(fake_vz: FakeVirtualization, vm_files: VMFiles) -> None:
    spec = vm_spec(_config(vm_files), "ws1", os.devnull)
    spec["network"] = {"attachment": "bridged", "macAddress": ""}
    with pytest.raises(PolicyDenied, match="com.apple.vm.networking"):
        build_configuration(fake_vz, spec)
    assert "VZBridgedNetworkDeviceAttachment" not in {c for c, _, _ in fake_vz.calls}
    assert "validateWithError_" not in fake_vz.selectors("VZVirtualMachineConfiguration")


def test_disks_in_order_and_config_disk_last_read_only(fake_vz: FakeVirtualization, vm_files: VMFiles) -> None:
    extra = vm_files.root / "cache.img"
    extra.write_bytes(b"\0")
    config_disk = vm_files.root / "config.disk"
    config_disk.write_bytes(b"{}")
    tree = _build(fake_vz, vm_files, configDiskPath=str(config_disk), kernelArgs="loglevel=4", disks=[
        {"name": "data", "path": str(vm_files.data), "mountpoint": "/data", "mode": "ro"},
        {"name": "cache", "path": str(extra), "mountpoint": "/cache"}])
    assert tree["storageDevices"] == [_disk(vm_files.rootfs, False), _disk(vm_files.data, True),
                                      _disk(extra, False), _disk(config_disk, True)]
    assert tree["bootLoader"]["commandLine"].endswith(
        "microagent.shutdown=poweroff microagent.config=/dev/vdd loglevel=4")


def test_host_folders_are_virtiofs_shares(fake_vz: FakeVirtualization, vm_files: VMFiles) -> None:
    """-v /host/dir:/path[:ro]: one VirtioFS device per folder, tagged as guest init mounts it,
    read-only enforced by the framework; without folders the configuration has no such devices."""
    folder = vm_files.root / "project"
    folder.mkdir()
    tree = _build(fake_vz, vm_files, shares=[
        {"tag": "share0", "path": str(folder), "mountpoint": "/work"},
        {"tag": "share1", "path": str(vm_files.root), "mountpoint": "/ro", "mode": "ro"}])

    def device(tag: str, path: Path, read_only: bool) -> dict[str, Any]:
        return {"class": "VZVirtioFileSystemDeviceConfiguration", "init": ["initWithTag_", [tag]],
                "share": {"class": "VZSingleDirectoryShare", "init": ["initWithDirectory_", [
                    {"class": "VZSharedDirectory", "init": ["initWithURL_readOnly_", [f"file://{path}", read_only]]}]]}}

    assert tree["directorySharingDevices"] == [device("share0", folder, False), device("share1", vm_files.root, True)]
    assert "directorySharingDevices" not in _build(fake_vz, vm_files)


def test_no_initrd_sets_no_ramdisk(fake_vz: FakeVirtualization, vm_files: VMFiles) -> None:
    tree = _build(fake_vz, vm_files, initrdPath="")
    assert "initialRamdiskURL" not in tree["bootLoader"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("cpuCount", 9, "config.cpuCount must be between 1 and 8 on this Mac, got 9"),
    ("memoryMiB", 64, "config.memoryMiB must be between 128 and 16384 on this Mac, got 64"),
    ("memoryMiB", 32768, "config.memoryMiB must be between 128 and 16384 on this Mac, got 32768"),
])
def test_cpu_and_memory_bounds(fake_vz: FakeVirtualization, vm_files: VMFiles, field: str, value: int,
                               message: str) -> None:
    with pytest.raises(Permanent) as info:
        _build(fake_vz, vm_files, **{field: value})
    assert info.value.message == message
    assert "VZVirtualMachineConfiguration" not in {c for c, s, _ in fake_vz.calls if s == "init"}


def test_bounds_edges_accepted(fake_vz: FakeVirtualization, vm_files: VMFiles) -> None:
    tree = _build(fake_vz, vm_files, cpuCount=8, memoryMiB=16384)
    assert (tree["CPUCount"], tree["memorySize"]) == (8, 16384 * MIB)


def test_validation_failure_and_missing_files(fake_vz: FakeVirtualization, vm_files: VMFiles) -> None:
    fake_vz.validation_error = "Invalid virtual machine configuration. The process doesn’t have the entitlement."
    with pytest.raises(Permanent, match="refused the configuration: Invalid virtual machine"):
        _build(fake_vz, vm_files)
    fake_vz.validation_error = ""
    vm_files.kernel.unlink()
    with pytest.raises(NotFound, match="kernel .* does not exist"):
        _build(fake_vz, vm_files)


def test_unknown_selector_is_an_error(fake_vz: FakeVirtualization) -> None:
    """The fake refuses selectors the real class lacks (so typos cannot pass here)."""
    with pytest.raises(AttributeError):
        fake_vz.VZLinuxBootLoader.alloc().initWithKernel_("x")
    with pytest.raises(AttributeError):
        fake_vz.VZVirtualMachineConfiguration.alloc().init().setCpuCount_(2)


def test_entitlements_plist_matches_the_sign_helper() -> None:
    from microagent.supervisors.applevf import sign

    packaged = Path(sign.__file__).with_name("entitlements.plist")
    assert packaged.read_text() == sign.ENTITLEMENTS_PLIST
    assert plistlib.loads(packaged.read_bytes()) == {"com.apple.security.virtualization": True}


def test_sign_dry_run_prints_the_codesign_steps(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "microagent.supervisors.applevf.sign", "--dry-run",
                           "--python", "/opt/py/bin/python3.12", "--dest", str(tmp_path / "python-vz")],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == f"cp -p /opt/py/bin/python3.12 {tmp_path / 'python-vz'}"
    assert lines[1].startswith("codesign --force --sign - --entitlements ")
    assert lines[1].endswith(f"entitlements.plist {tmp_path / 'python-vz'}")
    assert lines[2] == f"codesign -d --entitlements - --xml {tmp_path / 'python-vz'}"
    refused = subprocess.run([sys.executable, "-m", "microagent.supervisors.applevf.sign"],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "needs macOS" in refused.stderr
