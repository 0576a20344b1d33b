"""What a node can run, as its host agent advertises it (docs/cluster.md, "Placement")."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

#: MiB kept back for the host itself when no guest memory budget is given
HOST_RESERVE_MIB = 1024


def mem_available_mib() -> int:
    """MemAvailable from /proc/meminfo (0 when it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def detect_capabilities(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{backend, kvm, accel, arch, cpus, memory_mib, hostname}`` of this host.

    ``kvm`` is 1 only for hardware KVM (a paravirtual /dev/kvm cannot boot stock
    guests, so such a node runs them under TCG). ``overrides`` replace detected
    values: an operator's word for what the node should advertise.
    """
    from microagent.host.detect import detect
    from microagent.host.selection import default_backend
    from microagent.paths import host_arch
    from microagent.workspace.profiles import host_cpus, host_memory_mib

    facts = detect(versions=False)
    kvm = 1 if facts.kvm.kind == "hardware" else 0
    caps: dict[str, Any] = {"backend": default_backend(facts).backend, "kvm": kvm, "arch": host_arch(),
                            "cpus": host_cpus(), "memory_mib": host_memory_mib(),
                            "hostname": socket.gethostname()}
    caps.update(overrides or {})
    caps["accel"] = "kvm" if caps["kvm"] else "tcg"
    return caps
