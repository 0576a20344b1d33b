"""The ``host`` and ``check`` answers shared by the Linux supervisors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from microagent.errors import MicroagentError, NotFound, Unsupported
from microagent.host.detect import HostFacts, Tool, detect, host_os
from microagent.vmkit.types import Request


def host_document(backend: str, vmm: Tool, facts: HostFacts, *, vsock: bool, accel: str) -> dict[str, Any]:
    """The ``host`` object of a Linux supervisor's answer."""
    from microagent.guestinit import find_guest_init

    try:
        guest_init = str(find_guest_init(facts.architecture))
    except MicroagentError:
        guest_init = ""
    return {
        "backend": backend,
        "os": facts.os,
        "architecture": facts.architecture,
        "binaryPath": vmm.path,
        "binaryVersion": vmm.version,
        "binaryAvailable": vmm.available,
        "virtualizationSupported": facts.kvm.kind == "hardware" or backend == "qemu",
        "kvmAvailable": facts.kvm.kind == "hardware",
        "kvmKind": facts.kvm.kind,
        "kvmDetail": facts.kvm.detail,
        "accel": accel,
        "vsockAvailable": vsock,
        "tunAvailable": facts.tun,
        "userNamespacesAvailable": facts.user_namespaces,
        "userNetworkingAvailable": backend == "qemu" or facts.tools["pasta"].available,
        "guestInitPath": guest_init,
        "guestInitAvailable": bool(guest_init),
    }


def require_linux(backend: str, *, versions: bool = False, tools: tuple[str, ...] | None = None) -> HostFacts:
    """Detect the host, refusing anything but Linux (tool versions only when asked: ``host``;
    only ``tools`` when named: :func:`~microagent.host.detect.detect`).

    :raises Unsupported: on a non-Linux host.
    """
    if host_os() != "linux":
        raise Unsupported(f"the {backend} backend needs a Linux host; this host runs {host_os()}",
                          "use the backend of this host OS (see 'microagent host')")
    return detect(versions=versions, tools=tools)


def check_files(request: Request) -> None:
    """The kernel, initrd and disks a request names must exist.

    :raises NotFound: naming the first missing file.
    """
    cfg = request.config
    assert cfg is not None
    for label, path in (("kernel", cfg.kernelPath), ("rootfs", cfg.rootfsPath),
                        ("initrd", cfg.initrdPath), ("config disk", cfg.configDiskPath)):
        if path and not Path(path).is_file():
            raise NotFound(f"{label} {path} does not exist",
                           "run 'microagent kernel install'" if label in ("kernel", "initrd") else "")
    for disk in cfg.disks:
        if not Path(disk.path).is_file():
            raise NotFound(f"disk {disk.name} at {disk.path} does not exist")
