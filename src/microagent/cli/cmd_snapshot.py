"""``snapshot create|ls|rm``: named snapshots of a workspace's VM (docs/snapshots.md).

Restoring is ``start NAME --from-snapshot TAG``; forking is
``create NEW --from-snapshot NAME:TAG``.
"""

from __future__ import annotations

from typing import Any

import click

from microagent.cli.cmd_workspace import _store, common
from microagent.cli.output import emit


@click.group()
def snapshot() -> None:
    """Save, list and remove snapshots of a workspace (memory, device state and disk)."""


@snapshot.command("create")
@click.argument("name")
@click.argument("tag")
@common
def create(name: str, tag: str, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """Snapshot running or paused NAME as TAG; it keeps running (or paused) as it was."""
    doc = _store(state_dir, supervisor).snapshot(name, tag)
    emit({"ok": True, **doc}, as_json,
         lambda d: f"snapshot {name}:{tag} saved ({d['detail']}, {d['bytes'] // (1024 * 1024)} MiB on disk)\n"
                   f"restore it with: microagent start {name} --from-snapshot {tag}  (once stopped)\n"
                   f"fork it with: microagent create NEW --from-snapshot {name}:{tag}")
    return 0


def _ls_text(d: dict[str, Any]) -> str:
    rows = [f"{'WORKSPACE':<20} {'TAG':<24} {'CREATED':<25} {'MEMORY':>8} {'ON DISK':>9}"]
    for s in d["snapshots"]:
        rows.append(f"{s['workspace']:<20} {s['tag']:<24} {s['createdAt']:<25} "
                    f"{s['memoryMiB']:>4} MiB {s['bytes'] // (1024 * 1024):>5} MiB")
    return "\n".join(rows) if d["snapshots"] else "no snapshots"


@snapshot.command("ls")
@click.argument("name", required=False)
@common
def ls(name: str | None, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """List the snapshots of NAME, or of every workspace."""
    emit({"ok": True, "snapshots": _store(state_dir, supervisor).snapshots(name)}, as_json, _ls_text)
    return 0


@snapshot.command("rm")
@click.argument("name")
@click.argument("tag")
@common
def rm(name: str, tag: str, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """Remove snapshot TAG of NAME (forks already running keep their memory)."""
    doc = _store(state_dir, supervisor).remove_snapshot(name, tag)
    emit({"ok": True, **doc}, as_json, lambda d: f"removed snapshot {name}:{tag}")
    return 0
