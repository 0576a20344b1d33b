"""The QEMU command line for one workspace (pure: no I/O).

``-M microvm,acpi=on`` with virtio-mmio devices; KVM where the host has
hardware KVM, TCG otherwise (docs/architecture.md, "Facts about our hosts").
Paths of sockets and logs are relative: QEMU runs with the runtime directory
as its cwd, which keeps Unix socket paths short whatever the state directory is.

Disks are ``-blockdev`` JSON, never ``-drive``: QEMU's option syntax splits
on commas (a path containing ``,file=/etc/shadow`` would open that file) and
reads ``proto:`` prefixes; in JSON a path is only a file name.  ``-kernel``
and ``-initrd`` take plain file names.
"""

from __future__ import annotations

import json

from microagent import guestinit
from microagent.vmkit.types import Config

CHANNEL_PORT_NAME = "microagent.channel"
# tsc_early_khz: under TCG on our (PVM) hosts the kernel otherwise marks the TSC
# unstable and waits forever for timer ticks (measured: 4 of 4 boots hung).
BASE_CMDLINE = "console=ttyS0 panic=-1 quiet tsc_early_khz=2000000"


def kernel_cmdline(cfg: Config, hostname: str) -> str:
    config = f"/dev/vd{chr(ord('b') + len(cfg.disks))}" if cfg.configDiskPath else None
    return guestinit.kernel_cmdline(BASE_CMDLINE, root="/dev/vda", channel=f"virtio-serial:{CHANNEL_PORT_NAME}",
                                    hostname=hostname, config=config, extra=cfg.kernelArgs)


def blockdev(node: str, path: str, *, read_only: bool, discard: bool = False) -> list[str]:
    """A raw disk image as a ``-blockdev`` JSON argument (node ``node``, for ``drive=``)."""
    file: dict[str, object] = {"driver": "file", "filename": path, "read-only": read_only}
    spec: dict[str, object] = {"driver": "raw", "node-name": node, "read-only": read_only, "file": file}
    if discard:
        file["discard"] = spec["discard"] = "unmap"
    # werror=enospc: a write that finds the host disk full pauses the VM (retried on resume, no
    # data lost) instead of failing in the guest; rerror=report: a read error is the guest's.
    return ["-blockdev", json.dumps(spec), "-device", f"virtio-blk-device,drive={node},werror=enospc,rerror=report"]


def qemu_argv(binary: str, cfg: Config, *, hostname: str, accel: str,
              nic_args: list[str] | None = None) -> list[str]:
    """Every argument QEMU gets, in order; ``nic_args`` come from the network plan."""
    argv = [
        binary,
        "-M", "microvm,acpi=on",
        "-accel", accel,
        # TCG's default CPU model boots faster here than "max" (measured ~0.5 s).
        "-cpu", "host" if accel == "kvm" else "qemu64",
        "-m", str(cfg.memoryMiB),
        "-smp", str(cfg.cpuCount),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", cfg.kernelPath,
        "-append", kernel_cmdline(cfg, hostname),
        "-chardev", "file,id=serial0,path=serial.log,append=on",
        "-serial", "chardev:serial0",
        *blockdev("rootfs", cfg.rootfsPath, read_only=False, discard=True),  # writeback cache: the default
    ]
    if cfg.initrdPath:
        argv += ["-initrd", cfg.initrdPath]
    for index, disk in enumerate(cfg.disks):
        # numbered, not named: a disk's name is the caller's text, and -device splits on commas
        argv += blockdev(f"disk{index}", disk.path, read_only=disk.mode == "ro")
    if cfg.configDiskPath:
        argv += blockdev("config", cfg.configDiskPath, read_only=True)
    argv += nic_args or []
    argv += [
        "-device", "virtio-serial-device,max_ports=2",
        "-chardev", "socket,id=channel,path=channel.sock,server=on,wait=off",
        "-device", f"virtserialport,chardev=channel,name={CHANNEL_PORT_NAME}",
        "-qmp", "unix:qmp.sock,server=on,wait=off",  # the supervisor's
        "-qmp", "unix:qmp-events.sock,server=on,wait=off",  # the channel helper's: it follows VM pauses
        "-pidfile", "qemu.pid",
    ]
    return argv
