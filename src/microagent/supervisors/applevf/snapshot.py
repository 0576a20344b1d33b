"""Apple VF snapshots: ``saveMachineStateToURL:`` / ``restoreMachineStateFromURL:`` (macOS 14+).

A snapshot directory holds ``state``, the framework's saved-state file
(device state *and* guest memory: VZ keeps no memory file apart), and
``disk``, a copy of the root disk taken while the vcpus are stopped.

Save (the supervisor, :meth:`.backend.AppleVFBackend.save_vm`): ``pause``
when the VM runs (the framework saves only a paused VM), the vmhost's
``save`` op, the disk copied, ``resume`` when it ran (also after a failure).

Restore: the framework restores only into a VM built from a configuration
compatible with the saved one, and the file only from the same macOS and
framework.  So the manifest records :func:`device_layout` (of the VM spec)
and the vmhost's ``framework`` version; a restore refuses either mismatch
before anything launches or the disk is replaced, then starts the vmhost
with ``--restore state`` (it restores, then resumes).
"""

from __future__ import annotations

import json
from typing import Any

STATE_FILE = "state"
DISK_FILE = "disk"
#: the framework writes the whole guest memory
SAVE_TIMEOUT_S = 300.0
WHY_VERSION = "Virtualization.framework restores only a state saved by the same macOS and framework"


def device_layout(spec: dict[str, Any]) -> str:
    """What a saved state is bound to, from the VM spec: vCPUs, memory, the disks (name,
    read-only) in order, the network attachment and MAC, the vsock port, the shares' tags."""
    layout = {
        "cpus": spec.get("cpuCount"), "memMiB": spec.get("memoryMiB"),
        "disks": [[d.get("name"), bool(d.get("readOnly"))] for d in spec.get("disks", [])],
        "network": [spec.get("network", {}).get("attachment"), spec.get("network", {}).get("macAddress")],
        "vsockPort": spec.get("vsockPort"),
        "shares": [s.get("tag") for s in spec.get("shares", [])],
    }
    return json.dumps(layout, sort_keys=True, separators=(",", ":"))
