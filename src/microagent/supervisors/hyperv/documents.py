"""The JSON documents the Hyper-V backend hands to HCS and HNS (pure: no I/O).

Shapes follow the HCS schema 2.x (``ComputeSystem``, ``VirtualMachine``,
``Chipset.LinuxKernelDirect``, ``Topology``, ``Devices.Scsi``,
``Devices.HvSocket``, ``Devices.NetworkAdapters``, ``Devices.ComPorts``) and
the HCN schema 2.0 (``HostComputeNetwork``, ``HostComputeEndpoint``), as
published by Microsoft (learn.microsoft.com/virtualization/api/hcs/schemareference
and .../windows-server/networking/technologies/hcn/hcn-json-document-schemas;
hcsshim's generated ``internal/hcs/schema2`` types carry the same field names).
:data:`COMPUTE_SYSTEM_SHAPE` and friends restate the subset we emit, and
:func:`check_shape` holds every document to them (unknown keys, wrong types,
malformed GUIDs fail), so a typo cannot reach HCS.

Disk layout seen by the guest (one SCSI controller, LUN order = probe order):
LUN 0 ``rootfs.vhd`` → ``/dev/sda`` (read-write), LUN 1 the per-boot config
disk → ``/dev/sdb`` (read-only), LUN 2.. extra disks → ``/dev/sdc``...

Snapshots: :func:`save_options` is the ``SaveOptions`` of
``HcsSaveComputeSystem`` (``SaveType`` ``ToFile``, ``SaveStateFilePath``);
a restore is the same ``ComputeSystem`` document with
``VirtualMachine.RestoreState.SaveStateFilePath`` (hcsshim's schema2
``SaveOptions``/``RestoreState``); :func:`device_layout` is what a saved state
is bound to.

Guest channel: guest init listens on vsock port 1024; the Linux ``hv_sock``
transport exposes a vsock port ``N`` as the Hyper-V socket service
``{N:08x}-facb-11e6-bd58-64006a7986d3``.  The HvSocket config lets host
administrators (and Hyper-V Administrators) connect to that one service and
denies every other connect and every bind by default.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from microagent import guestinit

CHANNEL_PORT = 1024
#: The template GUID of the Linux vsock ↔ Hyper-V socket mapping; Data1 is the port.
VSOCK_TEMPLATE_SUFFIX = "facb-11e6-bd58-64006a7986d3"
SCHEMA_VERSION = {"Major": 2, "Minor": 1}
HCN_SCHEMA_VERSION = {"Major": 2, "Minor": 0}
OWNER = "microagent"

NAT_NETWORK_NAME = "microagent-nat"
NAT_SUBNET = "192.168.127.0/24"
NAT_GATEWAY = "192.168.127.1"
NAT_PREFIX = 24
#: HNS NAT networks run no resolver of their own, so the guest uses public resolvers.
NAT_DNS = ("1.1.1.1", "8.8.8.8")
GUEST_NIC = "eth0"
#: A fixed, project-owned GUID for the ``microagent-nat`` network (uuid5 of its name),
#: so every supervisor invocation opens the same network without enumerating.
NAT_NETWORK_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "microagent:hns-network:" + NAT_NETWORK_NAME))

#: SYSTEM, built-in Administrators and Hyper-V Administrators may connect.
CHANNEL_CONNECT_SDDL = "D:P(A;;FA;;;SY)(A;;FA;;;BA)(A;;FA;;;HA)"
#: A protected, empty DACL: nobody.
DENY_ALL_SDDL = "D:P"

BASE_CMDLINE = "console=ttyS0 panic=-1 quiet"

_GUID = re.compile(r"^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")
_MAC = re.compile(r"^([0-9A-F]{2}-){5}[0-9A-F]{2}$")


def service_id(port: int) -> str:
    """The Hyper-V socket service GUID of Linux vsock port ``port``."""
    if not 0 <= port <= 0xFFFFFFFF:
        raise ValueError(f"vsock port out of range: {port}")
    return f"{port:08x}-{VSOCK_TEMPLATE_SUFFIX}"


def compute_system_id(state_dir: str, name: str) -> str:
    """The HCS compute system ID of workspace ``name`` under ``state_dir``.

    Readable (``microagent-<name>-``) and unique per state directory (a uuid5
    prefix), so two state directories never fight over one compute system.
    """
    return f"microagent-{name}-{uuid.uuid5(uuid.NAMESPACE_URL, f'microagent:{state_dir}:{name}').hex[:12]}"


def com_pipe(system_id: str) -> str:
    """The named pipe COM1 (the guest's ttyS0) is served on."""
    return rf"\\.\pipe\{system_id}-com1"


def scsi_device(lun: int) -> str:
    """The guest block device of SCSI LUN ``lun`` (sda, sdb, ...)."""
    if not 0 <= lun < 26:
        raise ValueError(f"LUN out of range: {lun}")
    return "/dev/sd" + chr(ord("a") + lun)


@dataclass(frozen=True)
class DiskAttachment:
    """One VHD on the SCSI controller."""

    path: str
    read_only: bool = False


@dataclass(frozen=True)
class NetworkAttachment:
    """The HNS endpoint a VM's NIC is bound to."""

    endpoint_id: str
    mac_address: str


@dataclass(frozen=True)
class VmSpec:
    """Everything the compute system document depends on."""

    system_id: str
    kernel_path: str
    initrd_path: str
    rootfs_vhd: str
    config_vhd: str
    hostname: str
    memory_mib: int = 512
    cpu_count: int = 2
    kernel_args: str = ""
    extra_disks: tuple[DiskAttachment, ...] = ()
    network: NetworkAttachment | None = None
    channel_port: int = CHANNEL_PORT
    com_pipe: str = ""
    #: a saved-state file to restore the system from instead of booting it
    restore_from: str = ""


def kernel_cmdline(spec: VmSpec) -> str:
    """The kernel command line: console, then the guest init boot parameters (docs/protocol.md)."""
    return guestinit.kernel_cmdline(BASE_CMDLINE, root=scsi_device(0), channel=f"vsock:{spec.channel_port}",
                                    hostname=spec.hostname, config=scsi_device(1), extra=spec.kernel_args)


def compute_system_document(spec: VmSpec) -> dict[str, Any]:
    """The ``ComputeSystem`` document for ``HcsCreateComputeSystem``.

    ``ShouldTerminateOnLastHandleClosed`` is false on purpose: each supervisor
    command is a short process that closes its handle, and the VM must outlive
    it (``stop``/``kill`` end it explicitly).
    """
    attachments: dict[str, Any] = {
        "0": {"Type": "VirtualDisk", "Path": spec.rootfs_vhd, "ReadOnly": False},
        "1": {"Type": "VirtualDisk", "Path": spec.config_vhd, "ReadOnly": True},
    }
    for lun, disk in enumerate(spec.extra_disks, start=2):
        scsi_device(lun)
        attachments[str(lun)] = {"Type": "VirtualDisk", "Path": disk.path, "ReadOnly": disk.read_only}
    kernel: dict[str, Any] = {"KernelFilePath": spec.kernel_path, "KernelCmdLine": kernel_cmdline(spec)}
    if spec.initrd_path:
        kernel["InitRdPath"] = spec.initrd_path
    devices: dict[str, Any] = {
        "Scsi": {"0": {"Attachments": attachments}},
        "HvSocket": {"HvSocketConfig": {
            "DefaultBindSecurityDescriptor": DENY_ALL_SDDL,
            "DefaultConnectSecurityDescriptor": DENY_ALL_SDDL,
            "ServiceTable": {service_id(spec.channel_port): {
                "ConnectSecurityDescriptor": CHANNEL_CONNECT_SDDL,
                "BindSecurityDescriptor": DENY_ALL_SDDL,
            }},
        }},
        "ComPorts": {"0": {"NamedPipe": spec.com_pipe or com_pipe(spec.system_id)}},
    }
    if spec.network is not None:
        devices["NetworkAdapters"] = {GUEST_NIC: {"EndpointId": spec.network.endpoint_id,
                                                  "MacAddress": spec.network.mac_address}}
    doc: dict[str, Any] = {
        "Owner": OWNER,
        "SchemaVersion": dict(SCHEMA_VERSION),
        "ShouldTerminateOnLastHandleClosed": False,
        "VirtualMachine": {
            "StopOnReset": True,
            "Chipset": {"LinuxKernelDirect": kernel},
            "ComputeTopology": {"Memory": {"SizeInMB": spec.memory_mib},
                                "Processor": {"Count": spec.cpu_count}},
            "Devices": devices,
        },
    }
    if spec.restore_from:
        doc["VirtualMachine"]["RestoreState"] = {"SaveStateFilePath": spec.restore_from}
    check_shape(doc, COMPUTE_SYSTEM_SHAPE)
    return doc


def save_options(path: str) -> dict[str, Any]:
    """The ``SaveOptions`` of ``HcsSaveComputeSystem``: the state written to ``path``."""
    doc = {"SaveType": "ToFile", "SaveStateFilePath": path}
    check_shape(doc, SAVE_OPTIONS_SHAPE)
    return doc


def device_layout(doc: dict[str, Any]) -> str:
    """What a saved state is bound to, from a ``ComputeSystem`` document: memory, processors,
    the SCSI attachments (LUN, type, read-only), the Hyper-V socket services, the COM ports and
    the NICs (names) — not the files behind the disks, nor the endpoint."""
    import json

    vm = doc.get("VirtualMachine", {})
    topo, devices = vm.get("ComputeTopology", {}), vm.get("Devices", {})
    layout = {
        "memMiB": topo.get("Memory", {}).get("SizeInMB"), "cpus": topo.get("Processor", {}).get("Count"),
        "scsi": {c: sorted([lun, a.get("Type"), bool(a.get("ReadOnly"))]
                           for lun, a in ctl.get("Attachments", {}).items())
                 for c, ctl in devices.get("Scsi", {}).items()},
        "hvsock": sorted(devices.get("HvSocket", {}).get("HvSocketConfig", {}).get("ServiceTable", {})),
        "com": sorted(devices.get("ComPorts", {})),
        "nics": sorted(devices.get("NetworkAdapters", {})),
    }
    return json.dumps(layout, sort_keys=True, separators=(",", ":"))


def nat_network_document() -> dict[str, Any]:
    """The HCN ``HostComputeNetwork`` for ``microagent-nat`` (192.168.127.0/24, NAT)."""
    doc = {
        "SchemaVersion": dict(HCN_SCHEMA_VERSION),
        "Owner": OWNER,
        "Name": NAT_NETWORK_NAME,
        "Type": "NAT",
        "Flags": 0,
        "Ipams": [{"Type": "Static", "Subnets": [{
            "IpAddressPrefix": NAT_SUBNET,
            "Routes": [{"NextHop": NAT_GATEWAY, "DestinationPrefix": "0.0.0.0/0"}],
        }]}],
    }
    check_shape(doc, NETWORK_SHAPE)
    return doc


def endpoint_document(network_id: str, name: str) -> dict[str, Any]:
    """The HCN ``HostComputeEndpoint`` of workspace ``name`` (HNS assigns IP and MAC)."""
    doc = {
        "SchemaVersion": dict(HCN_SCHEMA_VERSION),
        "Owner": OWNER,
        "Name": f"microagent-{name}",
        "HostComputeNetwork": network_id,
        "Routes": [{"NextHop": NAT_GATEWAY, "DestinationPrefix": "0.0.0.0/0"}],
        "Dns": {"ServerList": list(NAT_DNS)},
    }
    check_shape(doc, ENDPOINT_SHAPE)
    return doc


def endpoint_address(properties: dict[str, Any]) -> tuple[str, int, str]:
    """``(ip, prefix, mac)`` from an endpoint's properties document.

    :raises ValueError: when HNS did not report an IPv4 address or a MAC.
    """
    configs = properties.get("IpConfigurations") or []
    for item in configs:
        ip = str(item.get("IpAddress", ""))
        if re.fullmatch(r"^\d+\.\d+\.\d+\.\d+$", ip):
            prefix = int(item.get("PrefixLength") or NAT_PREFIX)
            mac = str(properties.get("MacAddress", "")).upper().replace(":", "-")
            if not _MAC.fullmatch(mac):
                raise ValueError(f"HNS endpoint has no usable MAC address: {mac!r}")
            return ip, prefix, mac
    raise ValueError("HNS endpoint has no IPv4 address")


def guest_network_config(ip: str | None, prefix: int = NAT_PREFIX) -> dict[str, Any]:
    """The ``network`` object of the per-boot config (docs/protocol.md)."""
    if ip is None:
        return {"interfaces": [], "dns": [], "hosts": []}
    return {"interfaces": [{"name": GUEST_NIC, "address": ip, "prefix": prefix, "gateway": NAT_GATEWAY}],
            "dns": list(NAT_DNS),
            "hosts": [{"address": NAT_GATEWAY, "names": ["host.microagent.internal"]}]}


# --- schema shapes -----------------------------------------------------------


class ShapeError(ValueError):
    """A document that does not match its schema shape (a bug in this module)."""


@dataclass(frozen=True)
class Obj:
    """A JSON object with known fields; ``required`` must be present."""

    fields: dict[str, Any]
    required: frozenset[str] = frozenset()


@dataclass(frozen=True)
class MapOf:
    """A JSON object used as a map: any key matching ``key`` to values of ``value``."""

    value: Any
    key: str = r".+"


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class Enum:
    values: tuple[str, ...]


@dataclass(frozen=True)
class Pattern:
    regex: str


GUID = Pattern(_GUID.pattern)
VERSION = Obj({"Major": int, "Minor": int}, frozenset({"Major", "Minor"}))
ATTACHMENT = Obj({"Type": Enum(("VirtualDisk", "PassThru", "Iso")), "Path": str, "ReadOnly": bool},
                 frozenset({"Type", "Path"}))
HVSOCKET_SERVICE = Obj({"BindSecurityDescriptor": str, "ConnectSecurityDescriptor": str,
                        "AllowWildcardBinds": bool, "Disabled": bool})
COMPUTE_SYSTEM_SHAPE = Obj({
    "Owner": str,
    "SchemaVersion": VERSION,
    "ShouldTerminateOnLastHandleClosed": bool,
    "VirtualMachine": Obj({
        "StopOnReset": bool,
        "Chipset": Obj({"LinuxKernelDirect": Obj(
            {"KernelFilePath": str, "InitRdPath": str, "KernelCmdLine": str},
            frozenset({"KernelFilePath", "KernelCmdLine"}))}, frozenset({"LinuxKernelDirect"})),
        "ComputeTopology": Obj({"Memory": Obj({"SizeInMB": int}, frozenset({"SizeInMB"})),
                                "Processor": Obj({"Count": int}, frozenset({"Count"}))},
                               frozenset({"Memory", "Processor"})),
        "Devices": Obj({
            "Scsi": MapOf(Obj({"Attachments": MapOf(ATTACHMENT, r"^\d+$")})),
            "HvSocket": Obj({"HvSocketConfig": Obj({
                "DefaultBindSecurityDescriptor": str, "DefaultConnectSecurityDescriptor": str,
                "ServiceTable": MapOf(HVSOCKET_SERVICE, _GUID.pattern)})}),
            "ComPorts": MapOf(Obj({"NamedPipe": str, "OptimizeForDebugger": bool}), r"^[0-9]$"),
            "NetworkAdapters": MapOf(Obj({"EndpointId": GUID, "MacAddress": Pattern(_MAC.pattern)},
                                         frozenset({"EndpointId"}))),
        }),
        "RestoreState": Obj({"SaveStateFilePath": str, "RuntimeStateFilePath": str, "TemplateSystemId": str}),
    }, frozenset({"Chipset", "ComputeTopology", "Devices"})),
}, frozenset({"SchemaVersion", "VirtualMachine"}))
SAVE_OPTIONS_SHAPE = Obj({"SaveType": Enum(("ToFile", "AsTemplate")), "SaveStateFilePath": str,
                          "RuntimeStateFilePath": str})
ROUTE = Obj({"NextHop": str, "DestinationPrefix": str, "Metric": int}, frozenset({"NextHop", "DestinationPrefix"}))
NETWORK_SHAPE = Obj({
    "SchemaVersion": VERSION, "Owner": str, "Name": str, "Id": GUID, "Flags": int,
    "Type": Enum(("NAT", "ICS", "Transparent", "L2Bridge", "L2Tunnel", "Overlay", "Private", "Internal")),
    "Ipams": ListOf(Obj({"Type": Enum(("Static", "Dhcp")),
                         "Subnets": ListOf(Obj({"IpAddressPrefix": str, "Routes": ListOf(ROUTE)},
                                               frozenset({"IpAddressPrefix"})))})),
    "Dns": Obj({"Suffix": str, "Search": ListOf(str), "ServerList": ListOf(str), "Options": ListOf(str)}),
}, frozenset({"SchemaVersion", "Name", "Type"}))
ENDPOINT_SHAPE = Obj({
    "SchemaVersion": VERSION, "Owner": str, "Name": str, "Id": GUID, "Flags": int,
    "HostComputeNetwork": GUID, "MacAddress": str,
    "IpConfigurations": ListOf(Obj({"IpAddress": str, "PrefixLength": int}, frozenset({"IpAddress"}))),
    "Routes": ListOf(ROUTE),
    "Dns": Obj({"Suffix": str, "Search": ListOf(str), "ServerList": ListOf(str), "Options": ListOf(str)}),
}, frozenset({"SchemaVersion", "HostComputeNetwork"}))


def check_shape(value: Any, shape: Any, where: str = "$") -> None:
    """Hold ``value`` to ``shape``.

    :raises ShapeError: naming the first offending JSON path.
    """
    if isinstance(shape, Obj):
        if not isinstance(value, dict):
            raise ShapeError(f"{where} must be an object")
        for key in value:
            if key not in shape.fields:
                raise ShapeError(f"{where} has unknown field {key!r}")
        for key in shape.required:
            if key not in value:
                raise ShapeError(f"{where}.{key} is required")
        for key, sub in value.items():
            check_shape(sub, shape.fields[key], f"{where}.{key}")
    elif isinstance(shape, MapOf):
        if not isinstance(value, dict) or not value:
            raise ShapeError(f"{where} must be a non-empty object")
        for key, sub in value.items():
            if not re.fullmatch(shape.key, key):
                raise ShapeError(f"{where} key {key!r} does not match {shape.key}")
            check_shape(sub, shape.value, f"{where}.{key}")
    elif isinstance(shape, ListOf):
        if not isinstance(value, list):
            raise ShapeError(f"{where} must be a list")
        for i, sub in enumerate(value):
            check_shape(sub, shape.item, f"{where}[{i}]")
    elif isinstance(shape, Enum):
        if value not in shape.values:
            raise ShapeError(f"{where} must be one of {', '.join(shape.values)}, got {value!r}")
    elif isinstance(shape, Pattern):
        if not isinstance(value, str) or not re.fullmatch(shape.regex, value):
            raise ShapeError(f"{where} must match {shape.regex}, got {value!r}")
    elif shape is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ShapeError(f"{where} must be an integer")
    elif shape in (str, bool):
        if not isinstance(value, shape):
            raise ShapeError(f"{where} must be a {shape.__name__}")
    else:  # pragma: no cover - a shape table bug
        raise ShapeError(f"{where}: unknown shape {shape!r}")
