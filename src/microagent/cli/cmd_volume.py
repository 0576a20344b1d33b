"""``volume create|ls|inspect|rm``: named ext4 disks that outlive workspaces (docs/volumes.md).

Attaching is ``create``/``run`` ``-v NAME:/guest/path[:ro]``.
"""

from __future__ import annotations

from typing import Any

import click

from microagent.cli.main import json_option, state_dir_option, usage_errors
from microagent.cli.output import emit


@click.group()
def volume() -> None:
    """Create, list, inspect and remove volumes: ext4 disks that outlive workspaces (-v NAME:/path)."""


def _root(state_dir: str | None) -> Any:
    from microagent.paths import state_root

    return state_root(state_dir)


def _held(v: dict[str, Any]) -> str:
    return ", ".join(f"{h['workspace']} ({h['mode']})" for h in v["attachedTo"]) or "-"


@volume.command("create")
@click.argument("name")
@click.option("--size", "size_mib", type=int, default=1024, show_default=True, metavar="MIB",
              help="size in MiB (sparse: only what is written takes host space)")
@state_dir_option
@json_option
def create(name: str, size_mib: int, state_dir: str | None, as_json: bool) -> int:
    """Create volume NAME: an empty ext4 filesystem of --size MiB."""
    from microagent.workspace.volumes import check_volume_name, check_volume_size, create_volume

    with usage_errors():
        check_volume_name(name)
        check_volume_size(size_mib)
    doc = create_volume(_root(state_dir), name, size_mib)
    emit({"ok": True, **doc}, as_json,
         lambda d: f"volume {name} created ({d['sizeMiB']} MiB)\n"
                   f"attach it with: microagent create WS -v {name}:/data  (or run -v {name}:/data ...)")
    return 0


@volume.command("ls")
@state_dir_option
@json_option
def ls(state_dir: str | None, as_json: bool) -> int:
    """List volumes, their size, space used and the workspaces holding them."""
    from microagent.workspace.volumes import list_volumes

    def text(d: dict[str, Any]) -> str:
        if not d["volumes"]:
            return "no volumes (create one with 'microagent volume create NAME')"
        rows = [f"{'NAME':<24} {'SIZE':>9} {'USED':>9}  ATTACHED TO"]
        rows += [f"{v['name']:<24} {v['sizeMiB']:>5} MiB {v['usedBytes'] // (1024 * 1024):>5} MiB  {_held(v)}"
                 for v in d["volumes"]]
        return "\n".join(rows)

    emit({"ok": True, "volumes": list_volumes(_root(state_dir))}, as_json, text)
    return 0


@volume.command("inspect")
@click.argument("name")
@state_dir_option
@json_option
def inspect(name: str, state_dir: str | None, as_json: bool) -> int:
    """Show volume NAME: size, space used, disk path, creation time and holders."""
    from microagent.workspace.volumes import check_volume_name, inspect_volume

    with usage_errors():
        check_volume_name(name)
    doc = inspect_volume(_root(state_dir), name)
    emit({"ok": True, **doc}, as_json,
         lambda d: f"name:        {d['name']}\nsize:        {d['sizeMiB']} MiB\n"
                   f"used:        {d['usedBytes'] // (1024 * 1024)} MiB\ncreated:     {d['createdAt']}\n"
                   f"disk:        {d['path']}\nattached to: {_held(d)}")
    return 0


@volume.command("rm")
@click.argument("name")
@state_dir_option
@json_option
def rm(name: str, state_dir: str | None, as_json: bool) -> int:
    """Remove volume NAME and its data (refused while a workspace holds it)."""
    from microagent.workspace.volumes import check_volume_name, remove_volume

    with usage_errors():
        check_volume_name(name)
    doc = remove_volume(_root(state_dir), name)
    emit({"ok": True, **doc}, as_json, lambda d: f"removed volume {name}")
    return 0
