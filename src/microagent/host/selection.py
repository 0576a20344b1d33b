"""Which backend runs workspaces on this host, and why.

A backend that cannot run on this host OS is refused here, before anything
is built or spawned; there is never a silent fallback to another backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from msgspec import Struct

from microagent.errors import InvalidRequest, Unsupported
from microagent.host.detect import HostFacts, KvmInfo, Tool, host_os

#: backend -> host OS it runs on
BACKEND_OS = {
    "firecracker": "linux",
    "qemu": "linux",
    "apple-vf": "darwin",
    "windows-hyperv": "windows",
}

OS_NAMES = {"linux": "Linux", "darwin": "macOS", "windows": "Windows"}


class Selection(Struct, frozen=True):
    backend: str
    reason: str
    explicit: bool


def backends_for(os_name: str) -> list[str]:
    return [b for b, o in BACKEND_OS.items() if o == os_name]


def check_backend_runs_here(backend: str, os_name: str | None = None) -> None:
    """Fail closed when ``backend`` cannot run on this host OS.

    :raises InvalidRequest: for a name that is not a backend.
    :raises Unsupported: for a backend of another host OS.
    """
    os_name = os_name or host_os()
    if backend not in BACKEND_OS:
        raise InvalidRequest(
            f"unknown backend {backend!r}",
            f"choose one of: {', '.join(BACKEND_OS)}",
        )
    if BACKEND_OS[backend] != os_name:
        valid = backends_for(os_name)
        raise Unsupported(
            f"backend {backend} needs a {OS_NAMES[BACKEND_OS[backend]]} host; this host runs "
            f"{OS_NAMES.get(os_name, os_name)}",
            f"use one of the backends this host supports: {', '.join(valid) or 'none'}",
        )


def default_backend(facts: HostFacts) -> Selection:
    """The backend this host uses when none is asked for, with the reason."""
    return _default_backend(facts.os, facts.kvm, lambda: facts.tools.get("firecracker"))


def host_default_backend() -> Selection:
    """:func:`default_backend` of this host, probing only what decides it: KVM, then the
    firecracker binary under hardware KVM only (the boot path's choice; a full
    :func:`~microagent.host.detect.detect` looks for every tool)."""
    from microagent.host.detect import probe_firecracker, probe_kvm

    os_name = host_os()
    kvm = probe_kvm() if os_name == "linux" else None
    return _default_backend(os_name, kvm, lambda: probe_firecracker(version=False))


def _default_backend(os_name: str, kvm: KvmInfo | None, firecracker_tool: Callable[[], Tool | None]) -> Selection:
    if os_name == "darwin":
        return Selection("apple-vf", "macOS host: Virtualization.framework", False)
    if os_name == "windows":
        return Selection("windows-hyperv", "Windows host: Hyper-V compute service (experimental)", False)
    if os_name != "linux" or kvm is None:
        raise Unsupported(f"no microagent backend runs on {os_name}", "use Linux, macOS or Windows")
    if kvm.kind != "hardware":
        return Selection("qemu", f"{kvm.detail}; firecracker needs hardware KVM, "
                                 "so qemu runs guests here", False)
    firecracker = firecracker_tool()
    if firecracker is None or not firecracker.available:
        return Selection("qemu", "hardware KVM is present but no firecracker binary was found "
                                 "(run 'make install' or set MICROAGENT_FIRECRACKER)", False)
    return Selection("firecracker", "hardware KVM and a firecracker binary are present", False)


def select_backend(requested: str | None, facts: HostFacts) -> Selection:
    """``--backend`` → ``MICROAGENT_BACKEND`` → the host default.

    :raises InvalidRequest: for an unknown backend name.
    :raises Unsupported: for a backend of another host OS.
    """
    if requested:
        check_backend_runs_here(requested, facts.os)
        return Selection(requested, "chosen with --backend", True)
    env = os.environ.get("MICROAGENT_BACKEND")
    if env:
        check_backend_runs_here(env, facts.os)
        return Selection(env, "chosen with MICROAGENT_BACKEND", True)
    return default_backend(facts)
