"""The Firecracker configuration for one workspace (pure: no I/O).

:func:`firecracker_config` turns a validated request :class:`Config` into the
JSON document given to ``firecracker --config-file`` (the same objects as the
API's ``PUT /boot-source``, ``/drives``, ``/machine-config``, ``/vsock``).

- ``boot-source``: the vmlinux ELF (the firecracker kernel store's ``Image``),
  the initramfs, and :func:`boot_args`.
- ``drives``: the root disk first, then the declared disks in order, then the
  per-boot config disk, read-only and always last, so the guest sees
  ``/dev/vda`` = root, ``/dev/vdb``… = disks, last = config (the same layout
  as the QEMU backend).  No drive is ``is_root_device``: the guest boots
  through the initramfs, whose init mounts ``microagent.root=/dev/vda``
  itself; a root device would only make Firecracker append ``root=/dev/vda``.
  The backend opens each through a symlink in the runtime directory
  (``drive-<id>``, relative: ``linked``), so snapshots stay relocatable.
- ``machine-config``: vCPUs, memory, SMT off.
- ``vsock``: guest CID 3, host UDS ``vsock.sock`` *relative* to the runtime
  directory (firecracker runs with that directory as its cwd, which keeps
  ``sun_path`` short whatever the state directory is).
- ``network-interfaces`` stays empty (isolated) unless the backend adds the
  workspace's TAP for ``--network nat``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from microagent import guestinit
from microagent.vmkit.types import Config

if TYPE_CHECKING:
    from microagent.supervisors.firecracker.slow_lane import SlowLane

GUEST_CID = 3
CHANNEL_PORT = 1024
VSOCK_UDS = "vsock.sock"
API_SOCKET = "firecracker.sock"
CONFIG_FILE = "firecracker.json"
#: the runtime directory's per-drive symlinks (:func:`drive_links`)
DRIVE_LINK_PREFIX = "drive-"

# Firecracker's recommended base: serial console, reboot through the keyboard
# controller (Firecracker exits when the guest resets), reboot on panic, no PCI.
BASE_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off quiet"


def instance_id(name: str) -> str:
    """A Firecracker ``--id`` for a workspace name.

    Firecracker accepts 1-64 characters from ``A-Za-z0-9-``; workspace names
    may also hold ``.`` and ``_``, which become ``-``.
    """
    return (re.sub(r"[^A-Za-z0-9-]", "-", name) or "microagent")[:64]


def config_disk_device(cfg: Config) -> str:
    """The guest device of the config disk: after the root disk and the declared disks."""
    index = 1 + len(cfg.disks)  # vda = rootfs
    return f"/dev/vd{chr(ord('a') + index)}"


def boot_args(cfg: Config, hostname: str, lane: SlowLane | None = None) -> str:
    """The kernel command line (guest init reads the ``microagent.*`` keys).

    ``lane`` (tests only, :mod:`.slow_lane`) adds its arguments after the base ones.

    ``microagent.shutdown=reboot``: Firecracker has no ACPI power-off; a guest
    reboot (``reboot=k``) makes the firecracker process exit, which is what
    ``halt`` waits for.
    """
    base = f"{BASE_BOOT_ARGS} {lane.boot_args}" if lane is not None and lane.boot_args else BASE_BOOT_ARGS
    return guestinit.kernel_cmdline(base, root="/dev/vda", channel=f"vsock:{CHANNEL_PORT}",
                                    hostname=hostname, shutdown="reboot",
                                    config=config_disk_device(cfg) if cfg.configDiskPath else None,
                                    extra=cfg.kernelArgs)


def _drive(drive_id: str, path: str, *, read_only: bool, linked: bool) -> dict[str, Any]:
    return {"drive_id": drive_id, "path_on_host": drive_link(drive_id) if linked else path,
            "is_root_device": False, "is_read_only": read_only}


def drive_link(drive_id: str) -> str:
    """The runtime directory's symlink a linked drive is opened through (relative)."""
    return f"{DRIVE_LINK_PREFIX}{drive_id}"


def _drives(cfg: Config) -> list[tuple[str, str, bool]]:
    """``(drive_id, host path, read-only)`` in guest order: root, declared disks, config."""
    drives = [("rootfs", cfg.rootfsPath, False)]
    drives += [(f"disk-{d.name}", d.path, d.mode == "ro") for d in cfg.disks]
    if cfg.configDiskPath:
        drives.append(("config", cfg.configDiskPath, True))
    return drives


def drive_links(cfg: Config) -> dict[str, str]:
    """The symlinks (relative name → host path) a ``linked`` configuration needs in the runtime dir."""
    return {drive_link(drive_id): path for drive_id, path, _ in _drives(cfg)}


def firecracker_config(cfg: Config, hostname: str, lane: SlowLane | None = None, *,
                       linked: bool = False) -> dict[str, Any]:
    """The ``--config-file`` document for ``cfg`` (``lane``: tests only, adds the CPU template).

    ``linked``: every drive is opened through its runtime-directory symlink
    (:func:`drive_links`), a path relative to firecracker's cwd, so a snapshot's
    state file names no workspace's disk and a restore in another runtime
    directory (a fork) opens its own.
    """
    drives = [_drive(drive_id, path, read_only=ro, linked=linked) for drive_id, path, ro in _drives(cfg)]
    boot: dict[str, Any] = {"kernel_image_path": cfg.kernelPath, "boot_args": boot_args(cfg, hostname, lane)}
    if cfg.initrdPath:
        boot["initrd_path"] = cfg.initrdPath
    doc: dict[str, Any] = {
        "boot-source": boot,
        "drives": drives,
        "machine-config": {"vcpu_count": cfg.cpuCount, "mem_size_mib": cfg.memoryMiB, "smt": False},
        "vsock": {"guest_cid": GUEST_CID, "uds_path": VSOCK_UDS},
        "network-interfaces": [],
    }
    if lane is not None:
        doc["cpu-config"] = lane.cpu_template
    return doc


def firecracker_argv(binary: str, name: str, *, restore: bool = False) -> list[str]:
    """Every argument firecracker gets (run with cwd = the runtime directory).

    The serial console is firecracker's stdout (→ ``serial.log``); its own log
    goes to ``vmm.log`` through ``--log-path``.  ``restore``: no
    ``--config-file``: a snapshot is loaded through the API into an
    unconfigured VMM (:mod:`.snapshot`).
    """
    config = [] if restore else ["--config-file", CONFIG_FILE]
    return [binary, "--api-sock", API_SOCKET, *config, "--id", instance_id(name),
            "--log-path", "vmm.log", "--level", "Info"]
