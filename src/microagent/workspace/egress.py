"""A workspace's egress policy: change it (running or not), hand its secrets to the proxy,
read its audit log."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from microagent.egress.policy import EgressPolicy
from microagent.errors import InvalidRequest
from microagent.workspace.manifest import save_manifest


def set_policy(store: Any, name: str, policy: EgressPolicy, *, allowlist: bool = True,
               secrets: bool = False) -> dict[str, Any]:
    """Store ``policy`` in NAME's manifest and, when its helper runs, hand it the new one.

    ``allowlist``: replace the hosts and CIDRs (else keep the current ones); ``secrets``:
    replace the secret bindings (else keep them) and hand their values, read from their
    sources now, to a running proxy.  A secret that keeps its name keeps its placeholder
    (the guest's environment has it); a new secret's placeholder reaches the guest's
    environment at its next start.

    The proxy reads the policy again for every connection, so a running
    workspace applies it from its next connection on.  A workspace created
    without egress has no proxy in its guest: its policy is stored and takes
    effect at the next start.

    :returns: ``{"egress": wire, "applied": bool}`` (applied: a running helper got it).
    :raises InvalidRequest: the workspace has a NIC (egress needs ``--network isolated``),
        or a secret's source cannot be read.
    """
    from microagent.egress.runtime import POLICY_NAME, write_policy
    from microagent.egress.secrets import read_values

    with store.lock(name, "egress set"):
        manifest = store.manifest(name)
        if manifest.network != "isolated":
            raise InvalidRequest(f"{name} uses --network {manifest.network}; egress needs --network isolated",
                                 "create the workspace with --network isolated and --egress-allow")
        if secrets and policy.secrets and manifest.backend == "windows-hyperv":
            from microagent.errors import Unsupported

            raise Unsupported("the windows-hyperv backend cannot hand egress secrets to its proxy",
                              "drop --secret (the allowlist works), or use the qemu or firecracker backend")
        current = EgressPolicy.from_wire(manifest.egress) if manifest.egress is not None else EgressPolicy()
        bindings = policy.keeping_placeholders(current).secrets if secrets else current.secrets
        base = policy if allowlist else current
        policy = EgressPolicy(base.allow_hosts, base.allow_cidrs, bindings)
        values = read_values(bindings) if secrets else {}  # before anything changes
        save_manifest(store.root, dataclasses.replace(manifest, egress=policy.to_wire()))
        runtime = store.runtime_path(name)
        applied = manifest.egress is not None and (runtime / POLICY_NAME).exists()
        if applied:
            write_policy(runtime, policy)
            if values:
                supply_secrets(runtime, name, values)
    return {"egress": policy.to_wire(), "applied": applied}


def read_secret_values(manifest: Any) -> dict[str, str]:
    """The values of ``manifest``'s secrets, read from their sources now (empty: none).

    :raises InvalidRequest: an unset variable or unreadable file, naming the secret.
    """
    if not manifest.egress or not manifest.egress.get("secrets"):
        return {}
    from microagent.egress.secrets import read_values

    return read_values(EgressPolicy.from_wire(manifest.egress).secrets)


def supply_secrets(runtime_dir: Path, name: str, values: dict[str, str]) -> None:
    """Hand ``values`` to the egress proxy of the running workspace (memory only)."""
    from microagent.egress.vault import supply

    supply(Path(runtime_dir), values, name)


def audit_dir(store: Any, name: str) -> Path:
    """Where NAME's ``egress.log`` lives (its runtime directory)."""
    store.manifest(name)  # NotFound for an unknown workspace
    return Path(store.runtime_path(name))
