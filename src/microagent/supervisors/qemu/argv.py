"""The QEMU command line for one workspace (pure: no I/O).

``-M microvm,acpi=on`` with virtio-mmio devices; KVM where the host has
hardware KVM, TCG otherwise (docs/architecture.md, "Facts about our hosts").
An aarch64 guest gets ``-M virt`` (virtio-mmio too, PL011 console ``ttyAMA0``,
PSCI power-off), emulated by TCG on an x86_64 host.
Paths of sockets and logs are relative: QEMU runs with the runtime directory
as its cwd, which keeps Unix socket paths short whatever the state directory is.

Disks are ``-blockdev`` JSON, never ``-drive``: QEMU's option syntax splits
on commas (a path containing ``,file=/etc/shadow`` would open that file) and
reads ``proto:`` prefixes; in JSON a path is only a file name.  ``-kernel``
and ``-initrd`` take plain file names.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from microagent import guestinit
from microagent.vmkit.types import Config

CHANNEL_PORT_NAME = "microagent.channel"
# tsc_early_khz: under TCG on our (PVM) hosts the kernel otherwise marks the TSC
# unstable and waits forever for timer ticks (measured: 4 of 4 boots hung).
BASE_CMDLINE = "console=ttyS0 panic=-1 quiet tsc_early_khz=2000000"
AARCH64_CMDLINE = "console=ttyAMA0 panic=-1 quiet"


class Machine(NamedTuple):
    """What differs between guest architectures on the QEMU command line."""

    machine: str
    tcg_cpu: str
    cmdline: str


MACHINES = {
    # +arat: with an always-running APIC timer the guest kernel uses one-shot timers and stops
    # its tick when idle (microvm has no HPET to broadcast from, so without ARAT it ticks at
    # 250 Hz for good: about 4% of a core per idle VMM under TCG, 1.4% with it)
    "x86_64": Machine("microvm,acpi=on", "qemu64,+arat", BASE_CMDLINE),
    # cortex-a57: TCG emulates it faster than "max" (no pointer authentication to emulate)
    "aarch64": Machine("virt", "cortex-a57", AARCH64_CMDLINE),
}


def kernel_cmdline(cfg: Config, hostname: str, arch: str = "x86_64") -> str:
    config = f"/dev/vd{chr(ord('b') + len(cfg.disks))}" if cfg.configDiskPath else None
    return guestinit.kernel_cmdline(MACHINES[arch].cmdline, root="/dev/vda",
                                    channel=f"virtio-serial:{CHANNEL_PORT_NAME}",
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


def memory_backend(cfg: Config, path: str, *, share: bool) -> list[str]:
    """Guest RAM in a file: ``share=True`` writes through to it (what a snapshot copies),
    ``share=False`` maps it copy-on-write (a fork of a snapshot's memory).  JSON, since
    ``-object``'s option syntax splits on commas in a path."""
    spec = {"qom-type": "memory-backend-file", "id": "ram0", "mem-path": path,
            "size": cfg.memoryMiB * 1024 * 1024, "share": share}
    return ["-object", json.dumps(spec), "-machine", "memory-backend=ram0"]


def anonymous_memory(cfg: Config) -> list[str]:
    """Guest RAM in anonymous memory, for a restore whose state carries the RAM (a snapshot
    of a VM that mapped its memory copy-on-write): like a private mapping, never a shared
    block, which QEMU's ``x-ignore-shared`` would refuse to load pages into."""
    spec = {"qom-type": "memory-backend-ram", "id": "ram0", "size": cfg.memoryMiB * 1024 * 1024}
    return ["-object", json.dumps(spec), "-machine", "memory-backend=ram0"]


def ram_is_shared_file(argv: list[str]) -> bool | None:
    """Whether the VM's RAM is a file it writes through to (``True``), private memory
    (``False``: a copy-on-write mapping or anonymous), or not in a memory backend at all."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "-object" and '"id": "ram0"' in value:
            return '"share": true' in value
    return None


def device_layout(argv: list[str]) -> str:
    """What must match between the QEMU that saved a snapshot and the one restoring it:
    machine, CPU model and count, memory size and every device (not the files behind them)."""
    keep = ("-M", "-machine", "-accel", "-cpu", "-m", "-smp", "-device")
    return " ".join(f"{flag} {value}" for flag, value in zip(argv, argv[1:]) if flag in keep)


def qemu_argv(binary: str, cfg: Config, *, hostname: str, accel: str,
              nic_args: list[str] | None = None, memory_args: list[str] | None = None,
              incoming: bool = False, arch: str = "x86_64", share_sockets: list[str] | None = None) -> list[str]:
    """Every argument QEMU gets, in order; ``nic_args`` come from the network plan,
    ``memory_args`` from :func:`memory_backend`; ``incoming`` waits for a migration
    stream (a snapshot restore) instead of booting; ``arch`` is the guest's;
    ``share_sockets``: the virtiofsd socket of each of ``cfg.shares`` (:mod:`.virtiofs`)."""
    machine = MACHINES[arch]
    argv = [
        binary,
        "-M", machine.machine,
        "-accel", accel,
        # TCG's default CPU model boots faster here than "max" (measured ~0.5 s); +arat (see MACHINES).
        "-cpu", "host" if accel == "kvm" else machine.tcg_cpu,
        "-m", str(cfg.memoryMiB),
        *(memory_args or []),
        "-smp", str(cfg.cpuCount),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", cfg.kernelPath,
        "-append", kernel_cmdline(cfg, hostname, arch),
        "-chardev", "file,id=serial0,path=serial.log,append=on",
        "-serial", "chardev:serial0",
    ]
    if cfg.initrdPath:
        argv += ["-initrd", cfg.initrdPath]
    disks = [blockdev("rootfs", cfg.rootfsPath, read_only=False, discard=True)]  # writeback cache: the default
    for index, disk in enumerate(cfg.disks):
        # numbered, not named: a disk's name is the caller's text, and -device splits on commas
        disks.append(blockdev(f"disk{index}", disk.path, read_only=disk.mode == "ro"))
    if cfg.configDiskPath:
        disks.append(blockdev("config", cfg.configDiskPath, read_only=True))
    if arch == "aarch64":
        # virt hands out its virtio-mmio slots from the top down and the guest probes them
        # bottom up, so the last disk given would be vda: give them last first.
        disks.reverse()
    for disk_args in disks:
        argv += disk_args
    argv += nic_args or []
    if cfg.shares:
        # vhost-user (libvhost-user) serves virtio 1.0 only; virtio-mmio defaults to legacy
        argv += ["-global", "virtio-mmio.force-legacy=false"]
    for index, (share, sock) in enumerate(zip(cfg.shares, share_sockets or ())):
        # vhost-user needs guest RAM the daemon can map: memory_args share it (a file, share=on);
        # the tag is [A-Za-z0-9_-] (vmkit.types.ShareTag) and the socket name ours: no commas
        argv += ["-chardev", f"socket,id=fs{index},path={sock}",
                 "-device", f"vhost-user-fs-device,chardev=fs{index},tag={share.tag}"]
    argv += [
        "-device", "virtio-serial-device,max_ports=2",
        "-chardev", "socket,id=channel,path=channel.sock,server=on,wait=off",
        "-device", f"virtserialport,chardev=channel,name={CHANNEL_PORT_NAME}",
        "-qmp", "unix:qmp.sock,server=on,wait=off",  # the supervisor's
        "-qmp", "unix:qmp-events.sock,server=on,wait=off",  # the channel helper's: it follows VM pauses
        "-pidfile", "qemu.pid",
    ]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv
