"""``microagent gc``: clean up after workspaces whose VMM died unobserved.

Every runtime directory in the state root is reconciled through its
supervisor's ``inspect``, which kills an orphaned channel helper and removes
the TAP and firewall rules of a dead VMM.  What killed creates left (a
staging directory, a ``prepared`` runtime directory without a workspace) is
removed once its creator is dead.  NAT leases of workspaces that no
longer exist are freed.  TAPs, rules or pasta namespaces that look like
microagent's but belong to no workspace of this state root are reported,
never removed: they may belong to another state root on the same host.
Guest RAM files on tmpfs that no process maps (their run directory removed
by hand) are removed: a live VM of any state root maps its own.
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
    """``<root>/run/*``, and workspaces still in the earlier ``<root>/<name>`` layout."""
    from microagent.runtime_state import locate_runtime_dir
    from microagent.vmkit.types import is_safe_name

    names = set()
    for parent in (root / "run", root / "workspaces"):
        if parent.is_dir():
            names |= {p.name for p in parent.iterdir() if is_safe_name(p.name)}
    return sorted(rt for rt in (locate_runtime_dir(root, n) for n in names) if (rt / "runtime.json").is_file())


def collect(root: Path, supervisor: str | None = None) -> dict[str, Any]:
    """Reconcile every workspace and report what was cleaned and what looks foreign."""
    from microagent.workspace import staging

    reaped = staging.reap(root)
    reconciled, errors = [], []
    known: dict[str, Path] = {}
    for rt in _runtime_dirs(root):
        known[rt.name] = rt
        try:
            runtime = json.loads((rt / "runtime.json").read_text())
            backend = str(runtime.get("backend") or "qemu")
            resp = SupervisorClient(backend, root, supervisor).send("inspect", rt.name, timeout=60)
            reconciled.append({"workspace": rt.name,
                               "state": resp.event.state if resp.event else "unknown"})
        except (MicroagentError, ValueError) as exc:
            errors.append({"workspace": rt.name, "error": getattr(exc, "message", str(exc))})
    freed = _free_stale_leases(root, set(known) | _manifest_names(root))
    from microagent.ramfiles import reap_orphans

    return {"ok": not errors, "reconciled": reconciled, "errors": errors, "freedLeases": freed,
            "reapedStaging": reaped, "reapedRamFiles": reap_orphans(), "foreign": _foreign(root, known)}


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


def _foreign(root: Path, known: dict[str, Path]) -> dict[str, list[str]]:
    from microagent.network.pasta import namespace_name

    ours = {tap_name(rt) for rt in known.values()}
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout.split("\n")
    taps = [line.split()[0].split("@")[0] for line in links if line.split()]
    foreign_taps = [t for t in taps if _TAP.fullmatch(t) and t not in ours]
    from microagent.network.firewall import rule_owners

    from microagent.network.nat import rule_owner

    owners = rule_owners()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    mine = {namespace_name(rt) for rt in known.values()}
    foreign_ns = [ns.split()[0] for ns in namespaces
                  if ns.split() and _NETNS.fullmatch(ns.split()[0]) and ns.split()[0] not in mine]
    return {"taps": foreign_taps, "ruleOwners": sorted(owners - {rule_owner(n, tap_name(rt)) for n, rt in known.items()}), "namespaces": foreign_ns}
