"""``microagent apply -f FILE`` and ``create -f FILE``: workspaces from spec files (docs/spec.md)."""

from __future__ import annotations

from typing import Any

import click

from microagent.cli.main import json_option, state_dir_option, usage_errors
from microagent.cli.output import emit

#: create's options a spec file replaces (everything but where state lives and how to print)
_NOT_WITH_SPEC_EXEMPT = ("name", "spec_file", "as_json", "state_dir", "supervisor")


def _load(path: str, name: str | None) -> tuple[Any, str]:
    from microagent.workspace.spec import load_spec, spec_name

    with usage_errors():
        spec = load_spec(path)
        return spec, spec_name(spec, name, path)


def _checked_kwargs(store: Any, name: str, spec: Any) -> dict[str, Any]:
    """Every check of the spec's values that needs no image or VM, as usage errors (exit 2)."""
    from microagent.workspace.services import check_services
    from microagent.workspace.spec import create_kwargs

    with usage_errors():
        kwargs = create_kwargs(spec)
        store.check_create_input(name, profile=spec.profile, memory_mib=spec.memory, cpus=spec.cpus,
                                 disk_size_mib=spec.disk_size, env=kwargs["env"], network=spec.network,
                                 publish=kwargs["publish"], allow_host_loopback=spec.allow_host_loopback)
        check_services(kwargs["setup"], kwargs["service"], kwargs["restart"])
    return kwargs


def create_from_spec(store: Any, name: str | None, path: str, as_json: bool) -> int:
    """``create -f FILE [NAME]``: the spec instead of create's flags (which it refuses beside it)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = [p.opts[-1] for p in ctx.command.params if p.name not in _NOT_WITH_SPEC_EXEMPT
             and ctx.get_parameter_source(p.name or "") not in (ParameterSource.DEFAULT, None)]
    if given:
        raise click.UsageError(f"-f takes everything from the spec file; drop {', '.join(given)} "
                               "(or put it in the file)")
    spec, name = _load(path, name)
    manifest = store.create(name, **_checked_kwargs(store, name, spec))
    emit({"ok": True, "state": "prepared", "diskPath": str(store.disk_path(name)), "workspace": manifest.to_json()},
         as_json, lambda d: f"created {name} (prepared) from {path}\nstart it with: microagent start {name}")
    return 0


def _text(d: dict[str, Any]) -> str:
    verb = {"created": "created", "updated": "updated", "unchanged": "is already as", "recreated": "recreated"}
    head = f"{d['name']} {verb[d['action']]}" + (" the spec" if d["action"] == "unchanged" else "")
    if d.get("dryRun"):
        head = f"{d['name']} would be {d['action']} (dry run)"
    lines = [head]
    for c in d["changes"]:
        lines.append(f"  {c['key']}: {c['from']!r} -> {c['to']!r}  ({c['effect']})")
    if d.get("pendingRestart"):
        lines.append(f"it is running: the changes take effect at its next start (microagent halt {d['name']}; "
                     f"microagent start {d['name']})")
    return "\n".join(lines)


@click.command()
@click.argument("name", required=False)
@click.option("-f", "--file", "spec_file", required=True, metavar="FILE", help="the spec file (microagent.yaml)")
@click.option("--recreate", is_flag=True,
              help="allow changes that need a rebuild (image, disk size, …): delete and create the workspace "
                   "again (its disk's content is lost)")
@click.option("--dry-run", is_flag=True, help="only say what would change")
@click.option("--supervisor", default=None, help="path of the supervisor executable to use")
@state_dir_option
@json_option
def apply(name: str | None, spec_file: str, recreate: bool, dry_run: bool, supervisor: str | None,
          state_dir: str | None, as_json: bool) -> int:
    """Create a workspace from a spec file, or bring an existing one to it, saying what changed."""
    from microagent.workspace.apply import apply as apply_spec
    from microagent.workspace.lifecycle import WorkspaceStore

    spec, name = _load(spec_file, name)
    store = WorkspaceStore(state_dir, supervisor)
    _checked_kwargs(store, name, spec)
    out = apply_spec(store, name, spec, recreate=recreate, dry_run=dry_run)
    emit({"ok": True, **out}, as_json, _text)
    return 0
