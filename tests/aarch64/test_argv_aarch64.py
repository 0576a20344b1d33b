"""The QEMU command line for an aarch64 guest (pure: no boot)."""

from __future__ import annotations

from microagent.images.foreign_busybox import applet_names
from microagent.supervisors.qemu.argv import qemu_argv
from microagent.vmkit.types import Config, Disk


def _argv(arch: str) -> list[str]:
    data = Disk(name="data", path="/w/data.img", mountpoint="/data", mode="rw")
    cfg = Config(stateDir="/s", kernelPath="/k/Image", rootfsPath="/w/rootfs.ext4", initrdPath="/k/i.cpio",
                 configDiskPath="/w/config.img", disks=(data,))
    return qemu_argv("qemu-system-" + arch, cfg, hostname="h", accel="tcg", arch=arch)


def _blockdev_nodes(argv: list[str]) -> list[str]:
    return [a.split("drive=")[1].split(",")[0] for a in argv if a.startswith("virtio-blk-device,drive=")]


def test_aarch64_uses_virt_with_a_pl011_console():
    argv = _argv("aarch64")
    assert argv[argv.index("-M") + 1] == "virt"
    assert argv[argv.index("-cpu") + 1] == "cortex-a57"
    append = argv[argv.index("-append") + 1]
    assert "console=ttyAMA0" in append and "tsc_early_khz" not in append
    assert "microagent.root=/dev/vda" in append and "microagent.config=/dev/vdc" in append
    assert "virtio-serial-device,max_ports=2" in argv


def test_aarch64_gives_disks_last_first_so_the_rootfs_is_vda():
    # virt's virtio-mmio slots are probed in the reverse of the order devices are given
    assert _blockdev_nodes(_argv("aarch64")) == ["config", "disk0", "rootfs"]
    assert _blockdev_nodes(_argv("x86_64")) == ["rootfs", "disk0", "config"]


def test_applet_names_are_read_from_the_table():
    binary = b"\x00junk\x00[\x00[[\x00ash\x00cat\x00sh\x00\x00more"
    assert applet_names(binary) == ["[", "[[", "ash", "cat", "sh"]
