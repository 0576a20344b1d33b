"""The guest kernel command line: one builder (:func:`microagent.guestinit.kernel_cmdline`),
and each backend's line byte for byte as guest init and the docs expect it."""

from __future__ import annotations

import pytest

from microagent.guestinit import kernel_cmdline
from microagent.supervisors.applevf.vzconfig import command_line as applevf_cmdline
from microagent.supervisors.firecracker.config import boot_args as firecracker_cmdline
from microagent.supervisors.hyperv.documents import VmSpec
from microagent.supervisors.hyperv.documents import kernel_cmdline as hyperv_cmdline
from microagent.supervisors.qemu.argv import kernel_cmdline as qemu_cmdline
from microagent.vmkit.types import Config, Disk

PLAIN = Config(stateDir="/s")
#: vda root, vdb data, vdc ref, vdd the config disk
FULL = Config(stateDir="/s", disks=(Disk("data", "/d/data.img", "/data"), Disk("ref", "/d/ref.img", "/ref", "ro")),
              configDiskPath="/w/config.img", kernelArgs="loglevel=7 foo=bar")
BOOT = "microagent.root=/dev/vda microagent.channel={channel} microagent.hostname=ws1 microagent.shutdown={shutdown}"


@pytest.mark.parametrize(("build", "vmm_args", "channel", "shutdown"), [
    (qemu_cmdline, "console=ttyS0 panic=-1 quiet tsc_early_khz=2000000", "virtio-serial:microagent.channel",
     "poweroff"),
    (firecracker_cmdline, "console=ttyS0 reboot=k panic=1 pci=off quiet", "vsock:1024", "reboot"),
    (applevf_cmdline, "console=hvc0", "vsock:1024", "poweroff"),
])
def test_each_backend_keeps_its_command_line(build, vmm_args: str, channel: str, shutdown: str) -> None:  # type: ignore[no-untyped-def]
    line = f"{vmm_args} {BOOT.format(channel=channel, shutdown=shutdown)}"
    assert build(PLAIN, "ws1") == line
    assert build(FULL, "ws1") == f"{line} microagent.config=/dev/vdd loglevel=7 foo=bar"


def test_hyperv_keeps_its_command_line() -> None:
    spec = VmSpec(system_id="x", kernel_path="k", initrd_path="i", rootfs_vhd="r", config_vhd="c", hostname="ws1")
    assert hyperv_cmdline(spec) == (
        "console=ttyS0 panic=-1 quiet microagent.root=/dev/sda microagent.channel=vsock:1024 "
        "microagent.hostname=ws1 microagent.shutdown=poweroff microagent.config=/dev/sdb")
    spec = VmSpec(system_id="x", kernel_path="k", initrd_path="i", rootfs_vhd="r", config_vhd="c", hostname="ws1",
                  kernel_args="loglevel=7 foo=bar", channel_port=2000)
    assert hyperv_cmdline(spec) == (
        "console=ttyS0 panic=-1 quiet microagent.root=/dev/sda microagent.channel=vsock:2000 "
        "microagent.hostname=ws1 microagent.shutdown=poweroff microagent.config=/dev/sdb loglevel=7 foo=bar")


def test_the_builder_orders_vmm_args_boot_parameters_then_user_args() -> None:
    assert kernel_cmdline("console=ttyS0", root="/dev/vda", channel="vsock:1024", hostname="h") == (
        "console=ttyS0 microagent.root=/dev/vda microagent.channel=vsock:1024 microagent.hostname=h "
        "microagent.shutdown=poweroff")
    assert kernel_cmdline("c", root="r", channel="vsock:1", hostname="h", shutdown="reboot", config="/dev/vdb",
                          extra="quiet") == (
        "c microagent.root=r microagent.channel=vsock:1 microagent.hostname=h microagent.shutdown=reboot "
        "microagent.config=/dev/vdb quiet")
    assert "microagent.config" not in kernel_cmdline("c", root="r", channel="vsock:1", hostname="h", config="")
