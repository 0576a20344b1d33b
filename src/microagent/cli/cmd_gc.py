"""``microagent gc``."""

from __future__ import annotations

from typing import Any

import click

from microagent.cli.main import json_option, state_dir_option
from microagent.cli.output import emit


@click.command()
@state_dir_option
@click.option("--supervisor", default=None, help="path of the supervisor executable to use")
@json_option
def gc(state_dir: str | None, supervisor: str | None, as_json: bool) -> int:
    """Reconcile every workspace; remove leftovers (helpers, TAPs, rules, leases) of dead VMs."""
    from microagent.paths import state_root
    from microagent.workspace.gc import collect

    doc = collect(state_root(state_dir), supervisor)

    def text(d: dict[str, Any]) -> str:
        lines = [f"{r['workspace']}: {r['state']}" for r in d["reconciled"]]
        lines += [f"{e['workspace']}: error: {e['error']}" for e in d["errors"]]
        if d["freedLeases"]:
            lines.append(f"freed NAT leases: {', '.join(d['freedLeases'])}")
        f = d["foreign"]
        if f["taps"] or f["ruleOwners"]:
            lines.append(f"not ours to remove (another state root?): taps {f['taps']}, rules of {f['ruleOwners']}")
        return "\n".join(lines) or "nothing to do"

    emit(doc, as_json, text)
    return 0 if doc["ok"] else 1
