"""``clone NAME NEW``: a copy of a workspace at rest (docs/commit.md).

The copy is built like a create (:mod:`.staging`): the disk is copied into a
staging directory (a reflink where the filesystem allows, else a sparse copy:
:func:`microagent.images.ext4.copy_disk`), the manifest written there with the
new name, and the directory published with one rename, then prepared.  A
clone that fails or is killed leaves no workspace behind.  Snapshots and the
runtime state (serial log, events) are the source's own and are not copied;
its setup record is (the setup's work is on the copied disk);
the clone's first start boots its own disk (never the image's boot snapshot).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from microagent.vmkit.basics import now_rfc3339
from microagent.workspace.state import WorkspaceState, require_state

if TYPE_CHECKING:
    from microagent.workspace.lifecycle import WorkspaceStore
    from microagent.workspace.manifest import Manifest


def clone(store: WorkspaceStore, name: str, new: str, *, created_by: str = "") -> Manifest:
    """Copy prepared, stopped or halted workspace ``name`` as ``new`` (state ``prepared``).

    :raises InvalidRequest: an unsafe new name.
    :raises NotFound: ``name`` does not exist.
    :raises Conflict: ``name`` is not at rest (naming its state), ``new`` exists, or ``name``
        has a volume attached read-write (a volume has a single writer).
    :raises ResourceExhausted: the host disk is full (nothing is left behind).
    """
    from microagent.guestinit import find_guest_init
    from microagent.images.ext4 import copy_disk
    from microagent.kernels import ensure_initramfs
    from microagent.kernels.vmlinux import kernel_architecture
    from microagent.paths import workspace_dir
    from microagent.workspace import services, staging
    from microagent.workspace import volumes as vols
    from microagent.workspace.lifecycle import DEFAULT_BOOT_TIMEOUT_S, check_name
    from microagent.workspace.manifest import save_manifest

    check_name(new)
    src = store.manifest(name)
    if new == name:
        from microagent.errors import Conflict

        raise Conflict(f"workspace {name} cannot be cloned onto itself", "give the clone another name")
    kernel = Path(src.verification.kernel.path)
    initrd = ensure_initramfs(kernel.parent, find_guest_init(kernel_architecture(kernel)))
    # Source first, then the new name: two clones in opposite directions time out, never deadlock.
    with store.lock(name, "clone"):
        state = store.inspect(name, src.backend).state
        if state is WorkspaceState.UNKNOWN:
            state = WorkspaceState.PREPARED
        require_state("clone", name, state)
        lock = store.lock(new, "create")
        with lock:
            try:
                staging.reap(store.root, new, locked=True)
                store._refuse_clash(new)
                client = store.client(src.backend)
                # the clone attaches the source's volumes: a read-write one has a single writer (Conflict)
                vols.claim(store.root, new, vols.parse_mount_specs(src.volumes))
                stage = staging.make(store.root, new)
                try:
                    copy_disk(store.disk_path(name), stage / "rootfs.ext4")
                    extra = {**src.extra, "clonedFrom": name}
                    manifest = dataclasses.replace(src, name=new, createdAt=now_rfc3339(), createdBy=created_by,
                                                   extra=extra)
                    save_manifest(store.root, manifest, directory=stage)
                    # the setup's outcome is on the copied disk: a clone never runs it again
                    if (record := services.load_record(store.root, name)) is not None:
                        services.save_record(stage, record)
                    config = store._boot_config(manifest, initrd, DEFAULT_BOOT_TIMEOUT_S)
                    staging.publish(stage, workspace_dir(store.root, new))
                except BaseException:
                    staging.remove(stage)
                    raise
                try:
                    client.send("prepare", new, config, timeout=120)
                except BaseException:
                    store._remove_quietly(client, new)
                    raise
            except BaseException:
                if not store.exists(new):
                    vols.release(store.root, new)
                lock.unlink_on_release = not store.exists(new)
                raise
    return manifest
