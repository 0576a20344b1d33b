"""Firecracker snapshots: ``PUT /snapshot/create`` and ``/snapshot/load``, plus the disk.

A snapshot directory holds the same files as QEMU's (``state``: Firecracker's
microVM state file, ``memory``: the guest memory file, ``disk``: a copy of
the root disk), so :mod:`microagent.workspace.snapshots` treats both alike.

Save: ``PATCH /vm Paused`` → ``PUT /snapshot/create`` (Full) → copy the root
disk while the vcpus are stopped → ``PATCH /vm Resumed`` when the VM ran.

Restore: a new firecracker process with the API socket and no boot
configuration, then ``PUT /snapshot/load`` with the memory file as a
``File`` backend, which Firecracker maps ``MAP_PRIVATE``: private
copy-on-write for an in-place restore and a fork alike, so the snapshot's
files are never written and stay reusable.

The state file records every device path as the boot gave it.  The boot
gives relative ones (:func:`.config.drive_links`, ``vsock.sock``), resolved
against the firecracker process's cwd, the runtime directory: a restore
opens *its* runtime directory's links, which name the restoring workspace's
own disk (a fork's copy, not its source's), and binds its own vsock socket.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microagent.errors import Conflict, MicroagentError, Permanent

if TYPE_CHECKING:
    from microagent.supervisors.firecracker.api import FirecrackerAPI

STATE_FILE = "state"
MEMORY_FILE = "memory"
DISK_FILE = "disk"
#: ``/snapshot/create`` writes the whole guest memory; ``/snapshot/load`` maps it
SAVE_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 60.0


def vmm_version(version: str) -> str:
    """What the manifest records and a restore compares: ``Firecracker v1.12.1``."""
    return f"Firecracker v{version}"


def device_layout(doc: dict[str, Any]) -> str:
    """The devices a snapshot's state file fixes, from the ``--config-file`` document:
    vCPUs, memory, the drives (id, read-only), the vsock CID and the network interfaces."""
    machine = doc.get("machine-config", {})
    layout = {
        "vcpus": machine.get("vcpu_count"), "memMiB": machine.get("mem_size_mib"),
        "drives": [[d.get("drive_id"), bool(d.get("is_read_only"))] for d in doc.get("drives", [])],
        "vsockCid": (doc.get("vsock") or {}).get("guest_cid"),
        "net": [n.get("iface_id") for n in doc.get("network-interfaces", [])],
    }
    return json.dumps(layout, sort_keys=True, separators=(",", ":"))


#: why a snapshot of another firecracker is refused (:meth:`~microagent.supervisors.vmm.VMMBackend.refuse_incompatible`)
WHY_VERSION = "Firecracker loads only the snapshot format of its own version"


def save(api: "FirecrackerAPI", dest: Path, disk: Path, *, resume: bool) -> None:
    """Pause, write the state and memory files, copy ``disk`` into ``dest``; resume when
    ``resume`` (also after a failure: the VM stays as it was).

    :raises Conflict: Firecracker refuses (e.g. a VM that was never started).
    """
    from microagent.images.ext4 import copy_disk

    state = api.instance_info().state
    if state not in ("Running", "Paused"):
        raise Conflict(f"firecracker reports the VM {state!r}; only a started VM can be snapshotted",
                       "start the workspace first")
    if state == "Running":
        api.pause()
    try:
        try:
            api.request("PUT", "/snapshot/create", {"snapshot_type": "Full",
                                                    "snapshot_path": str(dest / STATE_FILE),
                                                    "mem_file_path": str(dest / MEMORY_FILE)})
        except MicroagentError as exc:
            raise type(exc)(f"saving the snapshot failed: {exc.message}", exc.remediation) from exc
        # the vcpus are stopped and virtio-block writes synchronously: the disk is at rest
        copy_disk(disk, dest / DISK_FILE)
    finally:
        if resume:
            api.resume()


def load(api: "FirecrackerAPI", dest: Path) -> None:
    """Load the snapshot in ``dest`` into a firecracker started without a configuration,
    and run it.

    :raises Permanent: Firecracker refuses the files (its reason included).
    """
    body = {"snapshot_path": str(dest / STATE_FILE),
            "mem_backend": {"backend_type": "File", "backend_path": str(dest / MEMORY_FILE)},
            "resume_vm": True}
    try:
        api.request("PUT", "/snapshot/load", body)
    except MicroagentError as exc:
        raise Permanent(f"firecracker could not load the snapshot {dest}: {exc.message}",
                        "see vmm.log in the runtime directory; take a new snapshot after a cold start") from exc
    state = api.instance_info().state
    if state != "Running":
        raise Permanent(f"firecracker reports the restored VM {state!r}, not running",
                        "see vmm.log in the runtime directory")
