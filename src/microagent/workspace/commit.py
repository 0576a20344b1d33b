"""``commit NAME IMAGE_REF``: a workspace at rest saved as an OCI image (docs/commit.md).

The image work (reading the disk, the layer, the config, the destinations) is
:mod:`microagent.images.commit`; this module holds the workspace's lock, checks
its state, finds the image it was created from (the base) and decides whether
the layer can be a diff against it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microagent.errors import Permanent
from microagent.workspace.state import WorkspaceState, require_state

if TYPE_CHECKING:
    from microagent.images.commit import Base
    from microagent.images.model import Platform
    from microagent.workspace.lifecycle import WorkspaceStore
    from microagent.workspace.manifest import Manifest


def _platform(manifest: Manifest) -> Platform:
    from microagent.images.manifest import platform_for

    return platform_for(Path(manifest.verification.kernel.path).parent.name)


def find_base(root: Path, manifest: Manifest, platform: Platform) -> tuple[Base, str]:
    """The base image and disk to diff against, or a full-layer base and why.

    The diff is only sound against the very disk the workspace's disk was copied
    from (same inodes and times for what the guest did not touch): the base disk
    must still have the sha256 recorded at create, and the image's record and
    blobs must still be in the cache.
    """
    from microagent.digests import sha256_file
    from microagent.images import store as index
    from microagent.images.blobs import BlobStore
    from microagent.images.commit import Base

    digest = manifest.image.digest
    rec = next((r for r in index.list_images(root) if r.digest == digest
                and r.platform.architecture == platform.architecture), None)
    blobs = BlobStore.for_state(root)
    if rec is None or not all(blobs.has(d) for d in rec.blobs()):
        return Base(), f"image {manifest.image.ref} ({digest or 'no digest'}) is no longer in the image cache"
    disk = Path(manifest.verification.rootfsBase.path)
    try:
        same = "sha256:" + sha256_file(disk) == manifest.verification.rootfsBase.sha256
    except OSError:
        same = False
    if not same:
        return Base(), f"the base disk {disk.name} was removed or rebuilt since the workspace was created"
    import json

    config = json.loads(blobs.read_bytes(rec.config_digest, max_bytes=4 << 20))
    return Base(disk=disk, config_json=config, layers=rec.layers, digest=rec.digest), ""


def replay_journal(disk: Path) -> None:
    """A workspace stopped without a clean shutdown may leave writes in the ext4 journal;
    replay them as the next mount would (nothing else is checked or repaired)."""
    from microagent.workspace.disk import _tool

    proc = subprocess.run([_tool("e2fsck"), "-E", "journal_only", "-p", str(disk)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode not in (0, 1):
        raise Permanent(f"e2fsck could not replay the journal of {disk.name} ({proc.returncode}): "
                        f"{(proc.stderr or proc.stdout).strip()[:500]}",
                        "start the workspace once so its guest repairs the disk, halt it, commit again")


def commit(store: WorkspaceStore, name: str, ref: str, *, push: bool = False,
           allow_insecure: bool = False) -> dict[str, Any]:
    """Write workspace ``name``'s disk as image ``ref`` (see :mod:`microagent.images.commit`).

    :raises InvalidRequest: a destination a commit cannot write.
    :raises Conflict: the workspace is not prepared, stopped or halted (naming its state).
    :raises Permanent: a hostile disk, a path no layer can carry.
    """
    from microagent.images.commit import check_destination, commit_disk, push as push_image, record_in_cache, \
        write_layout
    from microagent.images.model import ImageConfig
    from microagent.images.reference import LayoutReference

    from microagent.images.store import pull_guard

    dest = check_destination(ref, push)
    manifest = store.manifest(name)
    pushed = None
    # held until the image is recorded or copied out: 'image prune' must not collect its blobs first
    with pull_guard(store.root):
        with store.lock(name, "commit"):
            state = store.inspect(name, manifest.backend).state
            if state is WorkspaceState.UNKNOWN:  # no runtime state: the disk is at rest
                state = WorkspaceState.PREPARED
            require_state("commit", name, state)
            disk = store.disk_path(name)
            replay_journal(disk)
            platform = _platform(manifest)
            base, why_full = find_base(store.root, manifest, platform)
            fallback = ImageConfig(env=manifest.image.env, working_dir=manifest.image.workdir,
                                   user=manifest.image.user)
            built = commit_disk(disk, base, store.root, platform=platform, fallback_config=fallback,
                                comment=f"from {manifest.image.ref}")
        if isinstance(dest, LayoutReference):
            write_layout(dest, built, store.root)
            where = "oci-layout"
        else:
            record_in_cache(store.root, dest, built)
            where = "cache"
            if push:
                pushed = push_image(dest, built, store.root, allow_insecure=allow_insecure)
                where = "registry"
    return {"workspace": name, "reference": str(dest), "destination": where, **built.summary(),
            "full": base.disk is None, **({"fullReason": why_full} if why_full else {}),
            **({"blobsPushed": pushed} if pushed is not None else {})}
