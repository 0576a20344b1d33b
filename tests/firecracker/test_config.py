"""The Firecracker configuration and command line (pure), and request validation of ``readiness``."""

from __future__ import annotations

import pytest

from microagent.errors import InvalidRequest
from microagent.supervisors.firecracker.config import (
    boot_args,
    firecracker_argv,
    firecracker_config,
    instance_id,
)
from microagent.vmkit.types import Config, Disk, parse_request


def _cfg(**kw: object) -> Config:
    base: dict[str, object] = dict(stateDir="/s", kernelPath="/k/Image", rootfsPath="/w/rootfs.ext4",
                                   initrdPath="/k/initramfs.cpio", memoryMiB=256, cpuCount=2)
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def test_minimal_config() -> None:
    doc = firecracker_config(_cfg(), "ws1")
    assert doc["boot-source"] == {
        "kernel_image_path": "/k/Image", "initrd_path": "/k/initramfs.cpio",
        "boot_args": "console=ttyS0 reboot=k panic=1 pci=off quiet microagent.root=/dev/vda "
                     "microagent.channel=vsock:1024 microagent.hostname=ws1 microagent.shutdown=reboot"}
    assert doc["drives"] == [{"drive_id": "rootfs", "path_on_host": "/w/rootfs.ext4",
                              "is_root_device": False, "is_read_only": False}]
    assert doc["machine-config"] == {"vcpu_count": 2, "mem_size_mib": 256, "smt": False}
    assert doc["vsock"] == {"guest_cid": 3, "uds_path": "vsock.sock"}
    assert doc["network-interfaces"] == []


def test_disks_in_order_and_config_disk_last_read_only() -> None:
    cfg = _cfg(disks=(Disk("data", "/d/data.img", "/data"), Disk("ref", "/d/ref.img", "/ref", "ro")),
               configDiskPath="/w/config.img", kernelArgs="loglevel=7")
    doc = firecracker_config(cfg, "h")
    assert [(d["drive_id"], d["path_on_host"], d["is_read_only"]) for d in doc["drives"]] == [
        ("rootfs", "/w/rootfs.ext4", False), ("disk-data", "/d/data.img", False),
        ("disk-ref", "/d/ref.img", True), ("config", "/w/config.img", True)]
    assert not any(d["is_root_device"] for d in doc["drives"])
    args = doc["boot-source"]["boot_args"]
    assert "microagent.config=/dev/vdd" in args  # vda root, vdb data, vdc ref, vdd config
    assert args.endswith(" loglevel=7")


def test_no_initrd_means_no_initrd_path() -> None:
    assert "initrd_path" not in firecracker_config(_cfg(initrdPath=""), "h")["boot-source"]
    assert "microagent.config" not in boot_args(_cfg(), "h")


@pytest.mark.parametrize(("name", "expected"), [("ws1", "ws1"), ("a.b_c", "a-b-c"), ("X" * 63, "X" * 63)])
def test_instance_id_is_what_firecracker_accepts(name: str, expected: str) -> None:
    assert instance_id(name) == expected


def test_argv_is_relative_to_the_runtime_dir() -> None:
    assert firecracker_argv("/bin/fc", "my.ws") == [
        "/bin/fc", "--api-sock", "firecracker.sock", "--config-file", "firecracker.json", "--id", "my-ws",
        "--log-path", "vmm.log", "--level", "Info"]


def _request(**cfg: object) -> dict[str, object]:
    return {"command": "start",
            "identity": {"requestID": "r", "runtimeID": "w", "role": "workload", "backend": "firecracker"},
            "config": {"stateDir": "/s", "kernelPath": "/k", "rootfsPath": "/r", **cfg}}


def test_readiness_is_validated() -> None:
    assert parse_request(_request()).config.readiness == "guest"  # type: ignore[union-attr]
    assert parse_request(_request(readiness="vmm")).config.readiness == "vmm"  # type: ignore[union-attr]
    with pytest.raises(InvalidRequest, match="config.readiness must be one of guest, vmm"):
        parse_request(_request(readiness="process"))
    with pytest.raises(InvalidRequest, match="config.readiness must be a string"):
        parse_request(_request(readiness=True))
