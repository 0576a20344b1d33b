"""``status``: one document about a workspace, with its files re-verified.

It combines the manifest (image, backend, resources, disk), the supervisor's
reconciled state (``inspect``: state, PID, liveness), readiness of the guest
channel, and the verification record recomputed now: the sha256 of the
kernel, the base root disk and the guest init compared with what they were
at create (``ok`` per file, and ``divergence`` listing what changed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from microagent.digests import sha256_file
from microagent.vmkit.types import now_rfc3339
from microagent.workspace.channel_path import guest_channel_path, has_helper
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.manifest import Manifest
from microagent.workspace.services import status_fields
from microagent.workspace.snapshots import list_snapshots
from microagent.workspace.state import WorkspaceState


def verify(manifest: Manifest) -> dict[str, Any]:
    """Recompute every recorded hash; ``{kernel, rootfsBase, init, ok, divergence}``."""
    out: dict[str, Any] = {}
    divergence = []
    for key, rec in manifest.verification.items():
        try:
            current = "sha256:" + sha256_file(Path(rec.path))
        except FileNotFoundError:
            current = None
        except OSError:
            current = None
        ok = current is not None and current == rec.sha256
        out[key] = {"path": rec.path, "recorded": rec.sha256, "current": current, "ok": ok}
        if not ok:
            divergence.append(key if current is not None else f"{key} (missing)")
    out["ok"] = not divergence
    out["divergence"] = divergence
    return out


def _readiness(store: WorkspaceStore, name: str, state: WorkspaceState, alive: bool,
               reported: dict[str, Any] | None, probe: bool) -> dict[str, Any]:
    keys = ("guestReady", "execReady", "shellReady")
    if state is not WorkspaceState.RUNNING or not alive:
        return {k: {"ready": False, "reason": f"workspace is {state.value}"} for k in keys}
    if reported:
        return {k: reported.get(k, {"ready": False}) for k in keys}
    path = guest_channel_path(store.root, name)
    if not path.exists():
        return {k: {"ready": False, "reason": f"{path.name} is missing"} for k in keys}
    now = now_rfc3339()
    if not (probe and has_helper(store.root, name)):
        # The single-client channel socket is not probed: that could steal it from a user.
        return {k: {"ready": True, "observedAt": now, "source": "socket"} for k in keys}
    from microagent.channel import open_channel
    from microagent.errors import MicroagentError

    try:
        with open_channel(path, hello_timeout=5.0) as conn:
            feats = conn.features
    except MicroagentError as exc:
        return {k: {"ready": False, "reason": exc.message} for k in keys}
    return {"guestReady": {"ready": True, "observedAt": now},
            "execReady": {"ready": "exec" in feats, "observedAt": now},
            "shellReady": {"ready": "shell" in feats, "observedAt": now}}


def workspace_status(store: WorkspaceStore, name: str, *, probe: bool = True) -> dict[str, Any]:
    """The status document of ``name`` (see the module docstring).

    :raises NotFound: when the workspace does not exist.
    """
    manifest = store.manifest(name)
    obs = store.inspect(name, manifest.backend)
    disk = store.disk_path(name)
    try:
        st = disk.stat()
        disk_info: dict[str, Any] = {"path": str(disk), "sizeMiB": st.st_size // 2**20,
                                     "allocatedMiB": round(st.st_blocks * 512 / 2**20, 1)}
    except FileNotFoundError:
        disk_info = {"path": str(disk), "missing": True}
    rt = store.runtime_path(name)
    return {
        "name": name,
        "state": obs.state.value,
        "detail": obs.detail,
        "observedAt": obs.observedAt,
        "alive": obs.alive,
        "pid": obs.pid if obs.alive else None,
        "backend": manifest.backend,
        "image": {"ref": manifest.image.ref, "digest": manifest.image.digest},
        "profile": manifest.profile,
        "resources": manifest.resources,
        "env": list(manifest.env),
        "network": _network(manifest, rt),
        "createdAt": manifest.createdAt,
        "disk": disk_info,
        "runtimeDir": str(rt),
        "serialLog": str(rt / "serial.log"),
        "channel": {"path": str(guest_channel_path(store.root, name)), "helper": has_helper(store.root, name)},
        "readiness": _readiness(store, name, obs.state, obs.alive,
                                obs.runtime.get("readiness") if isinstance(obs.runtime.get("readiness"), dict)
                                else None, probe),
        "verification": verify(manifest),
        "snapshots": [snap.summary() for snap in list_snapshots(store.root, name)],
        **({"volumes": list(manifest.volumes)} if manifest.volumes else {}),  # -v (docs/volumes.md)
        **status_fields(store, manifest, running=obs.alive and obs.state is WorkspaceState.RUNNING),
    }


def _network(manifest: Manifest, rt: Path) -> dict[str, Any]:
    """The mode and published ports, plus what the supervisor set up at the last start."""
    out: dict[str, Any] = {"mode": manifest.network,
                           "publish": [f"{p.host}:{p.hostPort}->{p.guestPort}/tcp" for p in manifest.publish]}
    if manifest.egress is not None:  # the allowlist proxy (docs/egress.md)
        out["egress"] = manifest.egress
    try:
        out["attached"] = json.loads((rt / "network.json").read_text())
    except (OSError, ValueError):
        pass
    return out
