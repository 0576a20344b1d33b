"""The QEMU command line for one workspace (pure: no I/O).

``-M microvm,acpi=on`` with virtio-mmio devices; KVM where the host has
hardware KVM, TCG otherwise (DESIGN.md §2).  Paths of sockets and logs are
relative: QEMU runs with the runtime directory as its cwd, which keeps Unix
socket paths short whatever the state directory is.
"""

from __future__ import annotations

from microagent.vmkit.types import Config

CHANNEL_PORT_NAME = "microagent.channel"
# tsc_early_khz: under TCG on our (PVM) hosts the kernel otherwise marks the TSC
# unstable and waits forever for timer ticks (measured: 4 of 4 boots hung).
BASE_CMDLINE = "console=ttyS0 panic=-1 quiet tsc_early_khz=2000000"


def kernel_cmdline(cfg: Config, hostname: str) -> str:
    parts = [BASE_CMDLINE, "microagent.root=/dev/vda",
             f"microagent.channel=virtio-serial:{CHANNEL_PORT_NAME}",
             f"microagent.hostname={hostname}", "microagent.shutdown=poweroff"]
    if cfg.configDiskPath:
        parts.append(f"microagent.config=/dev/vd{chr(ord('b') + len(cfg.disks))}")
    if cfg.kernelArgs:
        parts.append(cfg.kernelArgs)
    return " ".join(parts)


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
        "-drive", f"id=rootfs,file={cfg.rootfsPath},format=raw,if=none,cache=writeback,discard=unmap",
        "-device", "virtio-blk-device,drive=rootfs",
    ]
    if cfg.initrdPath:
        argv += ["-initrd", cfg.initrdPath]
    for disk in cfg.disks:
        ro = ",readonly=on" if disk.mode == "ro" else ""
        argv += ["-drive", f"id=disk-{disk.name},file={disk.path},format=raw,if=none{ro}",
                 "-device", f"virtio-blk-device,drive=disk-{disk.name}"]
    if cfg.configDiskPath:
        argv += ["-drive", f"id=config,file={cfg.configDiskPath},format=raw,if=none,readonly=on",
                 "-device", "virtio-blk-device,drive=config"]
    argv += nic_args or []
    argv += [
        "-device", "virtio-serial-device,max_ports=2",
        "-chardev", "socket,id=channel,path=channel.sock,server=on,wait=off",
        "-device", f"virtserialport,chardev=channel,name={CHANNEL_PORT_NAME}",
        "-qmp", "unix:qmp.sock,server=on,wait=off",
        "-pidfile", "qemu.pid",
    ]
    return argv
