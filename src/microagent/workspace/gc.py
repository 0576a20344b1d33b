"""``microagent gc``: clean up after workspaces whose VMM died unobserved.

Every runtime directory in the state root is reconciled through its
supervisor's ``inspect``, which kills an orphaned channel helper and removes
the TAP and firewall rules of a dead VMM.  NAT leases of workspaces that no
longer exist are freed.  TAPs, rules or pasta namespaces that look like
microagent's but belong to no workspace of this state root are reported,
never removed: they may belong to another state root on the same host.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from microagent.errors import MicroagentError
from microagent.network.plan import tap_name
from microagent.workspace.supervisor_client import SupervisorClient

_TAP = re.compile(r"^mat[0-9a-f]{10}$")
_NETNS = re.compile(r"^microagent-[0-9a-f]{10}$")


def _runtime_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "runtime.json").is_file())


def collect(root: Path, supervisor: str | None = None) -> dict[str, Any]:
    """Reconcile every workspace and report what was cleaned and what looks foreign."""
    reconciled, errors = [], []
    known = set()
    for rt in _runtime_dirs(root):
        known.add(rt.name)
        try:
            runtime = json.loads((rt / "runtime.json").read_text())
            backend = str(runtime.get("backend") or "qemu")
            resp = SupervisorClient(backend, root, supervisor).send("inspect", rt.name, timeout=60)
            reconciled.append({"workspace": rt.name,
                               "state": resp.event.state if resp.event else "unknown"})
        except (MicroagentError, ValueError) as exc:
            errors.append({"workspace": rt.name, "error": getattr(exc, "message", str(exc))})
    freed = _free_stale_leases(root, known | _manifest_names(root))
    return {"ok": not errors, "reconciled": reconciled, "errors": errors, "freedLeases": freed,
            "foreign": _foreign(root, known)}


def _manifest_names(root: Path) -> set[str]:
    ws = root / "workspaces"
    return {p.name for p in ws.iterdir() if (p / "workspace.json").is_file()} if ws.is_dir() else set()


def _free_stale_leases(root: Path, existing: set[str]) -> list[str]:
    path = root / "network" / "leases.json"
    if not path.is_file():
        return []
    from microagent.network import nat

    stale = [n for n in json.loads(path.read_text() or "{}") if n not in existing]
    for name in stale:
        nat.release(root, name)
    return stale


def _foreign(root: Path, known: set[str]) -> dict[str, list[str]]:
    from microagent.network.pasta import namespace_name

    ours = {tap_name(root / n) for n in known}
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout.split("\n")
    taps = [line.split()[0].split("@")[0] for line in links if line.split()]
    foreign_taps = [t for t in taps if _TAP.match(t) and t not in ours]
    from microagent.network.firewall import rule_owners

    from microagent.network.nat import rule_owner

    owners = rule_owners()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    mine = {namespace_name(root / n) for n in known}
    foreign_ns = [ns.split()[0] for ns in namespaces
                  if ns.split() and _NETNS.match(ns.split()[0]) and ns.split()[0] not in mine]
    return {"taps": foreign_taps, "ruleOwners": sorted(owners - {rule_owner(n, tap_name(root / n)) for n in known}), "namespaces": foreign_ns}
