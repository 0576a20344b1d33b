"""The Virtualization.framework configuration of one workspace.

Two steps, so the part that decides is testable without macOS:

- :func:`vm_spec` (pure): a validated request :class:`~microagent.vmkit.types.Config`
  becomes the *VM spec*, a small JSON document (``applevf.json`` in the
  runtime directory) that the per-workspace host process
  (:mod:`~microagent.supervisors.applevf.vmhost`) reads.
- :func:`build_configuration`: the VM spec becomes a
  ``VZVirtualMachineConfiguration`` through the seam ``vz``: on macOS the
  PyObjC module ``Virtualization`` itself, in tests
  ``tests/applevf/fake_vz.py``'s ``FakeVirtualization``, which records every
  constructor, property and method call.  Nothing here imports PyObjC.

What the configuration holds (the same guest layout as the Linux backends):

- ``VZLinuxBootLoader``: the uncompressed arm64 ``Image``, the initramfs and
  :func:`command_line` (``console=hvc0``: the virtio console is the guest's
  console; ``microagent.channel=vsock:1024``);
- vCPUs and memory, checked against ``VZVirtualMachineConfiguration``'s
  allowed minimum and maximum before anything is built;
- ``VZVirtioBlockDeviceConfiguration`` over ``VZDiskImageStorageDeviceAttachment``:
  the root disk (read-write) = ``/dev/vda``, the declared disks in order, the
  per-boot config disk read-only and last;
- one ``VZVirtioSocketDeviceConfiguration`` (the guest channel, vsock port 1024);
- network ``nat`` (and ``user``, which on macOS means the same) =
  ``VZVirtioNetworkDeviceConfiguration`` + ``VZNATNetworkDeviceAttachment``;
  ``isolated`` = no network device; ``bridged`` is refused
  (``policy_denied``): ``VZBridgedNetworkDeviceAttachment`` needs the
  ``com.apple.vm.networking`` entitlement, which Apple grants only on request;
- one ``VZVirtioConsoleDeviceSerialPortConfiguration`` whose
  ``VZFileHandleSerialPortAttachment`` writes to ``serial.log`` (appending)
  and has **no** read handle: the console takes no input;
- a ``VZVirtioEntropyDeviceConfiguration`` and a
  ``VZVirtioTraditionalMemoryBalloonDeviceConfiguration``;
- then ``validateWithError_``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from microagent import guestinit
from microagent.errors import NotFound, Permanent, PolicyDenied
from microagent.vmkit.types import Config

CHANNEL_PORT = 1024
SPEC_FILE = "applevf.json"
SPEC_VERSION = 1
MIB = 1024 * 1024
#: ``console=hvc0``: the virtio console (``VZVirtioConsoleDeviceSerialPortConfiguration``)
BASE_CMDLINE = "console=hvc0"
#: vmnet's default shared (NAT) network: the guest gets its address by DHCP
#: from vmnet; the gateway is only assumed for the host alias in /etc/hosts
VZ_NAT_SUBNET = "192.168.64"
VZ_NAT_GATEWAY = f"{VZ_NAT_SUBNET}.1"
NETWORK_ATTACHMENTS = {"isolated": "none", "user": "nat", "nat": "nat"}


# --- the VM spec (pure) ---------------------------------------------------------


def config_disk_device(cfg: Config) -> str:
    """The guest device of the config disk: after the root disk and the declared disks."""
    return f"/dev/vd{chr(ord('b') + len(cfg.disks))}"


def command_line(cfg: Config, hostname: str) -> str:
    """The kernel command line (guest init reads the ``microagent.*`` keys)."""
    return guestinit.kernel_cmdline(BASE_CMDLINE, root="/dev/vda", channel=f"vsock:{CHANNEL_PORT}",
                                    hostname=hostname, config=config_disk_device(cfg) if cfg.configDiskPath else None,
                                    extra=cfg.kernelArgs)


def mac_address(name: str) -> str:
    """A stable, locally administered, unicast MAC for a workspace's NIC."""
    digest = hashlib.sha256(b"microagent-applevf:" + name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def guest_network(mode: str, name: str) -> dict[str, Any]:
    """The ``network`` object of the per-boot config for an apple-vf guest.

    ``nat``/``user``: DHCP from vmnet (address, route and nameserver), so a
    Mac whose vmnet subnet was changed works too; only the host alias
    assumes vmnet's default gateway.
    """
    if NETWORK_ATTACHMENTS.get(mode) != "nat":
        return {"interfaces": [], "dns": [], "hosts": []}
    return {"interfaces": [{"name": "eth0", "dhcp": True}],
            "dns": [],
            "hosts": [{"address": VZ_NAT_GATEWAY, "names": ["host.microagent.internal"]}]}


def vm_spec(cfg: Config, name: str, serial_log: str) -> dict[str, Any]:
    """The VM spec the host process builds its configuration from.

    :param cfg: a validated request config (``configDiskPath`` already set
        when the supervisor wrote the per-boot config disk).
    :param name: the workspace name (``identity.runtimeID``).
    :param serial_log: where the virtio console writes.
    :raises PolicyDenied: for a network mode that needs an entitlement we lack.
    """
    hostname = cfg.hostname or name
    disks = [{"name": "rootfs", "path": cfg.rootfsPath, "readOnly": False}]
    disks += [{"name": d.name, "path": d.path, "readOnly": d.mode == "ro"} for d in cfg.disks]
    if cfg.configDiskPath:
        disks.append({"name": "config", "path": cfg.configDiskPath, "readOnly": True})
    attachment = network_attachment(cfg.network.mode)
    return {
        "version": SPEC_VERSION,
        "name": name,
        "kernel": cfg.kernelPath,
        "initrd": cfg.initrdPath,
        "commandLine": command_line(cfg, hostname),
        "cpuCount": cfg.cpuCount,
        "memoryMiB": cfg.memoryMiB,
        "disks": disks,
        "network": {"attachment": attachment, "macAddress": mac_address(name) if attachment == "nat" else ""},
        "vsockPort": CHANNEL_PORT,
        "serialLog": serial_log,
        # host folders: VirtioFS shares, read-only enforced by the framework (docs/volumes.md)
        "shares": [{"tag": sh.tag, "path": sh.path, "readOnly": sh.mode == "ro"} for sh in cfg.shares],
    }


def network_attachment(mode: str) -> str:
    """``nat`` or ``none`` for a request's network mode.

    :raises PolicyDenied: ``bridged`` (``com.apple.vm.networking``).
    :raises Permanent: an unknown mode.
    """
    if mode == "bridged":
        raise PolicyDenied(
            "apple-vf cannot use bridged networking: VZBridgedNetworkDeviceAttachment needs the "
            "com.apple.vm.networking entitlement, which Apple grants only to approved developers",
            "use --network nat (VZNATNetworkDeviceAttachment) or --network isolated")
    try:
        return NETWORK_ATTACHMENTS[mode]
    except KeyError:
        raise Permanent(f"config.network.mode {mode!r} is not supported by apple-vf",
                        "use isolated, user or nat") from None


# --- the configuration (through the vz seam) ----------------------------------


def _url(vz: Any, path: str) -> Any:
    return vz.NSURL.fileURLWithPath_(path)


def _describe(err: Any) -> str:
    """An ``NSError``'s text (``localizedDescription``), or ``str`` of anything else."""
    if err is None:
        return "unknown error"
    describe = getattr(err, "localizedDescription", None)
    return str(describe()) if callable(describe) else str(err)


def check_bounds(vz: Any, cpu_count: int, memory_mib: int) -> None:
    """vCPUs and memory must lie within what this Mac allows.

    :raises Permanent: naming ``config.cpuCount`` or ``config.memoryMiB``.
    """
    cls = vz.VZVirtualMachineConfiguration
    lo, hi = int(cls.minimumAllowedCPUCount()), int(cls.maximumAllowedCPUCount())
    if not lo <= cpu_count <= hi:
        raise Permanent(f"config.cpuCount must be between {lo} and {hi} on this Mac, got {cpu_count}",
                        "pass a --cpus value in that range")
    mem_lo, mem_hi = int(cls.minimumAllowedMemorySize()), int(cls.maximumAllowedMemorySize())
    if not mem_lo <= memory_mib * MIB <= mem_hi:
        raise Permanent(f"config.memoryMiB must be between {-(-mem_lo // MIB)} and {mem_hi // MIB} on this "
                        f"Mac, got {memory_mib}", "pass a --memory value in that range")


def _share(vz: Any, share: dict[str, Any]) -> Any:
    """A host folder as a VirtioFS device tagged ``share["tag"]`` (guest init mounts it by tag)."""
    if not os.path.isdir(share["path"]):
        raise NotFound(f"host folder {share['path']} does not exist")
    directory = vz.VZSharedDirectory.alloc().initWithURL_readOnly_(_url(vz, share["path"]),
                                                                   bool(share["readOnly"]))
    device = vz.VZVirtioFileSystemDeviceConfiguration.alloc().initWithTag_(share["tag"])
    device.setShare_(vz.VZSingleDirectoryShare.alloc().initWithDirectory_(directory))
    return device


def _storage(vz: Any, disk: dict[str, Any]) -> Any:
    if not os.path.isfile(disk["path"]):
        raise NotFound(f"disk {disk['name']} at {disk['path']} does not exist")
    attachment, err = vz.VZDiskImageStorageDeviceAttachment.alloc().initWithURL_readOnly_error_(
        _url(vz, disk["path"]), bool(disk["readOnly"]), None)
    if attachment is None:
        raise Permanent(f"disk {disk['name']} at {disk['path']} cannot be attached: {_describe(err)}",
                        "check that the file is a raw disk image you can read (and write, unless read-only)")
    return vz.VZVirtioBlockDeviceConfiguration.alloc().initWithAttachment_(attachment)


def _serial_port(vz: Any, serial_log: str) -> Any:
    fd = os.open(serial_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    handle = vz.NSFileHandle.alloc().initWithFileDescriptor_closeOnDealloc_(fd, True)
    attachment = vz.VZFileHandleSerialPortAttachment.alloc().initWithFileHandleForReading_fileHandleForWriting_(
        None, handle)  # no read handle: the console takes no input
    port = vz.VZVirtioConsoleDeviceSerialPortConfiguration.alloc().init()
    port.setAttachment_(attachment)
    return port


def build_configuration(vz: Any, spec: dict[str, Any]) -> Any:
    """The validated ``VZVirtualMachineConfiguration`` for a VM spec.

    :param vz: the ``Virtualization`` module (or its fake).
    :param spec: a :func:`vm_spec` document.
    :raises Permanent: bounds, unusable files, or ``validateWithError_`` refusing.
    :raises NotFound: a kernel, initrd or disk file is missing.
    :raises PolicyDenied: a network attachment we may not use (bridged).
    """
    check_bounds(vz, int(spec["cpuCount"]), int(spec["memoryMiB"]))
    for label, path in (("kernel", spec["kernel"]), ("initrd", spec.get("initrd") or "")):
        if path and not os.path.isfile(path):
            raise NotFound(f"{label} {path} does not exist", "run 'microagent kernel install --backend apple-vf'")
    config = vz.VZVirtualMachineConfiguration.alloc().init()
    config.setCPUCount_(int(spec["cpuCount"]))
    config.setMemorySize_(int(spec["memoryMiB"]) * MIB)

    boot = vz.VZLinuxBootLoader.alloc().initWithKernelURL_(_url(vz, spec["kernel"]))
    if spec.get("initrd"):
        boot.setInitialRamdiskURL_(_url(vz, spec["initrd"]))
    boot.setCommandLine_(spec["commandLine"])
    config.setBootLoader_(boot)

    config.setStorageDevices_([_storage(vz, disk) for disk in spec["disks"]])
    if spec.get("shares"):
        config.setDirectorySharingDevices_([_share(vz, share) for share in spec["shares"]])
    config.setSocketDevices_([vz.VZVirtioSocketDeviceConfiguration.alloc().init()])

    attachment = spec["network"]["attachment"]
    if attachment == "nat":
        nic = vz.VZVirtioNetworkDeviceConfiguration.alloc().init()
        nic.setAttachment_(vz.VZNATNetworkDeviceAttachment.alloc().init())
        nic.setMACAddress_(vz.VZMACAddress.alloc().initWithString_(spec["network"]["macAddress"]))
        config.setNetworkDevices_([nic])
    elif attachment == "none":
        config.setNetworkDevices_([])
    else:
        network_attachment(attachment)  # raises for bridged and unknown attachments

    config.setSerialPorts_([_serial_port(vz, spec["serialLog"])])
    config.setEntropyDevices_([vz.VZVirtioEntropyDeviceConfiguration.alloc().init()])
    config.setMemoryBalloonDevices_([vz.VZVirtioTraditionalMemoryBalloonDeviceConfiguration.alloc().init()])

    ok, err = config.validateWithError_(None)
    if not ok:
        raise Permanent(f"Virtualization.framework refused the configuration: {_describe(err)}",
                        "if it names an entitlement, run 'python -m microagent.supervisors.applevf.sign' "
                        "(docs/backends/apple-vf.md)")
    return config
