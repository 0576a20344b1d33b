"""``apply``: create a workspace from a spec, or bring an existing one to it (docs/spec.md).

What differs from the workspace's manifest is one of two kinds:

- **per boot** (``env``, ``memory``, ``cpus``, ``network``, ``publish``,
  ``allow-host-loopback``, ``egress``/secrets, ``service``, ``restart``, and
  ``setup`` while it has not run): the manifest is rewritten and the change
  takes effect at the next start (a running workspace keeps running as it was);
- **rebuild** (``image``, ``arch``, ``backend``, ``profile``, ``disk-size``,
  ``volumes``, and ``setup`` once it ran): the disk was built from them, so ``apply``
  refuses unless ``recreate``, which deletes the workspace and creates it
  again (started again if it was running).  Its disk's content is lost.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from microagent.errors import Conflict
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.manifest import Manifest, save_manifest
from microagent.workspace.spec import Spec, create_kwargs

PER_BOOT = "next start"
REBUILD = "rebuild"


def _volume_specs(specs: list[str]) -> list[str]:
    """``-v`` specs as the manifest records them (parsed and written back)."""
    from microagent.workspace.volumes import parse_mount_specs

    return [m.to_spec() for m in parse_mount_specs(specs)]


def _egress_wire(policy: Any, manifest: Manifest) -> dict[str, Any] | None:
    """The spec's policy as the manifest would record it: a secret that keeps its name keeps
    its placeholder (the spec parse makes new ones; the guest has the old)."""
    if policy is None:
        return None
    from microagent.egress.policy import EgressPolicy

    current = EgressPolicy.from_wire(manifest.egress) if manifest.egress is not None else None
    return policy.keeping_placeholders(current).to_wire()


def _change(key: str, old: Any, new: Any, effect: str) -> dict[str, Any]:
    return {"key": key, "from": old, "to": new, "effect": effect}


def diff(store: WorkspaceStore, manifest: Manifest, spec: Spec, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """What applying ``spec`` (as checked ``kwargs``) to ``manifest``'s workspace would change."""
    from microagent.vmkit.types import to_wire
    from microagent.workspace.boot_plan import check_arch
    from microagent.workspace.profiles import get_profile
    from microagent.workspace.services import load_record

    changes = []
    kernel_arch = manifest.verification.kernel.path.rstrip("/").split("/")[-2:-1]
    rebuild = {"image": (manifest.image.ref, spec.image),
               "backend": (manifest.backend, spec.backend or manifest.backend),
               "arch": (kernel_arch[0] if kernel_arch else "", check_arch(spec.arch) if spec.arch else None),
               "profile": (manifest.profile, spec.profile or manifest.profile),
               "disk-size": (manifest.diskSizeMiB, spec.disk_size or manifest.diskSizeMiB),
               # volumes are claimed (single writer) by create and released by delete
               "volumes": (list(getattr(manifest, "volumes", ())), _volume_specs(spec.volumes))}
    for key, (old, new) in rebuild.items():
        if new is not None and old != new:
            changes.append(_change(key, old, new, REBUILD))
    profile = get_profile(spec.profile or manifest.profile)
    setup_ran = (load_record(store.root, manifest.name) or {}).get("state") == "done"
    per_boot = {
        "memory": (manifest.memoryMiB, spec.memory or profile.memory_mib),
        "cpus": (manifest.cpuCount, spec.cpus or profile.cpus),
        "env": (list(manifest.env), list(kwargs["env"])),
        "network": (manifest.network, spec.network),
        "publish": ([to_wire(p) for p in manifest.publish], [to_wire(p) for p in kwargs["published"]]),
        "allow-host-loopback": (manifest.allowHostLoopback, spec.allow_host_loopback),
        "egress": (manifest.egress, _egress_wire(kwargs["egress"], manifest)),
        "setup": (list(manifest.setup), list(spec.setup)),
        "service": (manifest.service or None, spec.service),
        "restart": (manifest.restart, spec.restart),
    }
    for key, (old, new) in per_boot.items():
        if old != new:
            changes.append(_change(key, old, new, REBUILD if key == "setup" and setup_ran else PER_BOOT))
    return changes


def apply(store: WorkspaceStore, name: str, spec: Spec, *, recreate: bool = False,
          dry_run: bool = False) -> dict[str, Any]:
    """Create ``name`` from ``spec``, or bring it to ``spec``.

    :returns: ``{name, action: created|updated|unchanged|recreated, changes, state}``;
        with ``dry_run`` nothing is done and the action says what would be.
    :raises Conflict: when a change needs a rebuild and ``recreate`` is false.
    :raises InvalidRequest: for a spec value the checks refuse (before any change).
    """
    from microagent.workspace.services import check_services, record_path

    kwargs = create_kwargs(spec)
    profile, env, published = store.check_create_input(
        name, profile=kwargs["profile"], memory_mib=kwargs["memory_mib"], cpus=kwargs["cpus"],
        disk_size_mib=kwargs["disk_size_mib"], env=kwargs["env"], network=kwargs["network"],
        publish=kwargs["publish"], allow_host_loopback=kwargs["allow_host_loopback"])
    setup, service, restart = check_services(kwargs["setup"], kwargs["service"], kwargs["restart"])
    if not store.exists(name):
        if not dry_run:
            store.create(name, **kwargs)
        return {"name": name, "action": "created", "dryRun": dry_run, "changes": [],
                "state": "prepared" if not dry_run else "absent"}
    manifest = store.manifest(name)
    changes = diff(store, manifest, spec, {**kwargs, "env": env, "published": published})
    observed = store.observe(name, manifest.backend)
    doc = {"name": name, "dryRun": dry_run, "changes": changes, "state": observed.state.value}
    if not changes:
        return {**doc, "action": "unchanged"}
    rebuild = [c["key"] for c in changes if c["effect"] == REBUILD]
    if rebuild and not recreate:
        raise Conflict(f"applying the spec to workspace {name} changes {', '.join(rebuild)}, which need a rebuild "
                       "(its disk was made from them)",
                       "run apply again with --recreate: the workspace is deleted and created anew (what was "
                       "written on its disk is lost), or change only per-boot keys",
                       changes=changes)
    if dry_run:
        return {**doc, "action": "recreated" if rebuild else "updated"}
    if rebuild:
        was_running = observed.alive
        store.delete(name, force=True)
        store.create(name, **kwargs)
        if was_running:
            store.start(name)
        return {**doc, "action": "recreated", "state": "running" if was_running else "prepared"}
    with store.lock(name, "apply"):
        current = store.manifest(name)
        updated = dataclasses.replace(
            current, memoryMiB=spec.memory or profile.memory_mib, cpuCount=spec.cpus or profile.cpus, env=env,
            network=spec.network, publish=published, allowHostLoopback=spec.allow_host_loopback,
            egress=_egress_wire(kwargs["egress"], current),
            setup=setup, service=service, restart=restart)
        save_manifest(store.root, updated)
        if any(c["key"] == "setup" for c in changes):
            record_path(store.root, name).unlink(missing_ok=True)  # the new setup runs at the next start
    pending = observed.alive
    return {**doc, "action": "updated", "pendingRestart": pending}
