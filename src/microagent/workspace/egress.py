"""A workspace's egress policy: change it (running or not) and read its audit log."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from microagent.egress.policy import EgressPolicy
from microagent.errors import InvalidRequest
from microagent.workspace.manifest import save_manifest


def set_policy(store: Any, name: str, policy: EgressPolicy) -> dict[str, Any]:
    """Store ``policy`` in NAME's manifest and, when its helper runs, hand it the new one.

    The proxy reads the policy again for every connection, so a running
    workspace applies it from its next connection on.  A workspace created
    without egress has no proxy in its guest: its policy is stored and takes
    effect at the next start.

    :returns: ``{"egress": wire, "applied": bool}`` (applied: a running helper got it).
    :raises InvalidRequest: the workspace has a NIC (egress needs ``--network isolated``).
    """
    from microagent.egress.runtime import POLICY_NAME, write_policy

    with store.lock(name, "egress set"):
        manifest = store.manifest(name)
        if manifest.network != "isolated":
            raise InvalidRequest(f"{name} uses --network {manifest.network}; egress needs --network isolated",
                                 "create the workspace with --network isolated and --egress-allow")
        save_manifest(store.root, dataclasses.replace(manifest, egress=policy.to_wire()))
        runtime = store.runtime_path(name)
        applied = manifest.egress is not None and (runtime / POLICY_NAME).exists()
        if applied:
            write_policy(runtime, policy)
    return {"egress": policy.to_wire(), "applied": applied}


def audit_dir(store: Any, name: str) -> Path:
    """Where NAME's ``egress.log`` lives (its runtime directory)."""
    store.manifest(name)  # NotFound for an unknown workspace
    return Path(store.runtime_path(name))
