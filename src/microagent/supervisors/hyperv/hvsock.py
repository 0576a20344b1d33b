"""Hyper-V sockets (AF_HYPERV): the host end of the guest channel on Windows.

A Hyper-V socket address is ``SOCKADDR_HV``::

    offset size field
    0      2    Family     AF_HYPERV (34), little-endian
    2      2    Reserved   0
    4      16   VmId       the compute system's RuntimeId, Win32 GUID layout
    20     16   ServiceId  the service GUID (vsock port N -> {N:08x}-facb-11e6-bd58-64006a7986d3)

(Win32 GUID layout = ``uuid.UUID.bytes_le``: Data1..Data3 little-endian.)
Sockets are ``SOCK_STREAM`` with protocol ``HV_PROTOCOL_RAW`` (1).

CPython exposes ``socket.AF_HYPERV`` on Windows from 3.12 (address = the
tuple ``(vm_id, service_id)``), which :func:`connect` uses.  The packing
below documents the wire layout and is what tests check on Linux; this
module is imported on Linux only by those tests.
"""

from __future__ import annotations

import socket
import struct
import uuid

from microagent.errors import ChannelClosed, Unsupported

AF_HYPERV = 34
HV_PROTOCOL_RAW = 1
SOCKADDR_HV_SIZE = 36


def pack_sockaddr_hv(vm_id: str, service_id: str) -> bytes:
    """The 36-byte ``SOCKADDR_HV`` for ``vm_id`` and ``service_id``.

    :raises ValueError: when either is not a GUID.
    """
    return (struct.pack("<HH", AF_HYPERV, 0) + uuid.UUID(vm_id).bytes_le
            + uuid.UUID(service_id).bytes_le)


def unpack_sockaddr_hv(data: bytes) -> tuple[str, str]:
    """``(vm_id, service_id)`` from a ``SOCKADDR_HV``.

    :raises ValueError: for a wrong size or family.
    """
    if len(data) != SOCKADDR_HV_SIZE:
        raise ValueError(f"SOCKADDR_HV is {SOCKADDR_HV_SIZE} bytes, got {len(data)}")
    family, _ = struct.unpack("<HH", data[:4])
    if family != AF_HYPERV:
        raise ValueError(f"not an AF_HYPERV address: family {family}")
    return str(uuid.UUID(bytes_le=data[4:20])), str(uuid.UUID(bytes_le=data[20:36]))


def connect(vm_id: str, service_id: str, timeout: float | None = 10.0) -> socket.socket:
    """A connected Hyper-V socket to ``service_id`` inside VM ``vm_id``.

    :raises Unsupported: when this Python has no ``AF_HYPERV`` (not Windows, or Python < 3.12).
    :raises ChannelClosed: when nothing listens yet (worth retrying while the guest boots).
    """
    family = getattr(socket, "AF_HYPERV", None)
    if family is None:
        raise Unsupported("this Python has no AF_HYPERV sockets (needs Windows and Python 3.12 or newer)",
                          "install Python 3.12+ for Windows from python.org")
    sock = socket.socket(family, socket.SOCK_STREAM, getattr(socket, "HV_PROTOCOL_RAW", HV_PROTOCOL_RAW))
    sock.settimeout(timeout)
    try:
        sock.connect((vm_id, service_id))
    except OSError as exc:
        sock.close()
        raise ChannelClosed(f"cannot connect to Hyper-V socket service {service_id} in VM {vm_id}: {exc}",
                            "the guest is not listening yet; retry after it logs 'channel ready'") from exc
    sock.settimeout(None)
    return sock
