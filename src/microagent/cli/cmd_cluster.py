"""``cluster status``/``cluster agent``, and what ``--cluster ADDRESS`` does on
create, exec, list and delete (docs/cluster.md).

Thin: every call goes to :mod:`microagent.cluster`, imported (with Ray) only
when a cluster command runs, so the CLI costs nothing more without ``--cluster``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from microagent.cli.main import json_option, state_dir_option, usage_errors
from microagent.cli.output import emit, emit_json


def cluster_option(f: Any) -> Any:
    return click.option("--cluster", "cluster", default=None, metavar="ADDRESS",
                        help="act on the Ray cluster at ADDRESS (auto: the one this host joined; docs/cluster.md)")(f)


def on_cluster(handler: Callable[..., int], *, require: bool = False) -> Callable[[Any], Any]:
    """Give a local command ``--cluster ADDRESS`` (and ``--require`` with ``require``): with it the
    command's options go to ``handler`` instead. Put it right below ``@click.command()``."""
    def deco(f: Any) -> Any:
        @functools.wraps(f)  # keeps the options already attached (click keeps them in f.__dict__)
        def routed(**kwargs: Any) -> int:
            address, wanted = kwargs.pop("cluster"), kwargs.pop("require", ())
            if address is None:
                if wanted:
                    raise click.UsageError("--require needs --cluster")
                result: int = f(**kwargs)
                return result
            if require:
                kwargs["require"] = wanted
            return handler(address, **kwargs)
        routed = cluster_option(routed)
        if require:
            routed = click.option("--require", "require", multiple=True, metavar="KEY=VALUE",
                                  help="with --cluster: a capability its node must have "
                                       "(kvm=1, backend=qemu, arch=x86_64)")(routed)
        return routed
    return deco


def _take(options: dict[str, Any], keep: Sequence[str]) -> dict[str, Any]:
    """The ``keep`` options; any other one given a value (not its default) is a usage error:
    it has no meaning across a cluster."""
    ctx = click.get_current_context()
    defaults = {p.name: p.get_default(ctx) for p in ctx.command.params}
    bad = sorted(k for k, v in options.items()
                 if k not in keep and k not in ("state_dir", "supervisor") and v not in (None, False, ())
                 and v != defaults.get(k))
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise click.UsageError(f"{flags}: not available with --cluster (docs/cluster.md)")
    return {k: options[k] for k in keep if k in options}


def _cluster(address: str) -> Any:
    from microagent.cluster import Cluster

    return Cluster(address)


def parse_require(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` words as a ``require`` mapping (digits become numbers).

    :raises InvalidRequest: for a word that is not KEY=VALUE or an unknown key.
    """
    from microagent.cluster.placement import check_require
    from microagent.errors import InvalidRequest

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"--require {item!r} is not KEY=VALUE", "e.g. --require kvm=1")
        out[key] = int(value) if value.isdigit() else value
    return check_require(out)


def _row_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no workspaces"
    lines = [("NAME", "STATE", "NODE", "HOST", "PID")]
    lines += [(r["name"], r["state"], str(r.get("node") or "-")[:12], str(r.get("hostname") or "-"),
               str(r.get("pid") or "-")) for r in rows]
    widths = [max(len(row[i]) for row in lines) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)


# ------------------------------------------------------------------ the --cluster forms


def create(address: str, **options: Any) -> int:
    """``create --cluster``: place, create and boot NAME on a node."""
    o = _take(options, ("name", "image", "profile", "cpus", "memory", "disk_size", "env", "network", "require",
                        "as_json"))
    with usage_errors():
        req = parse_require(o["require"])
    ws = _cluster(address).create(o["name"], o["image"], profile=o["profile"], cpus=o["cpus"],
                                  memory_mib=o["memory"], disk_size_mib=o["disk_size"], env=list(o["env"]),
                                  network=o["network"], require=req)
    emit({"ok": True, **ws.info()}, o["as_json"],
         lambda d: f"created {d['name']} ({d['state']}) on node {d['hostname']} ({d['node'][:12]})")
    return 0


def exec_(address: str, **options: Any) -> int:
    """``exec --cluster``: output is collected on the node, then written here."""
    from microagent.workspace.lifecycle import check_env
    from microagent.workspace.sessions import check_command_size

    o = _take(options, ("name", "command", "env", "workdir", "user", "timeout", "output_limit", "as_json"))
    name, env = o["name"], list(o["env"])
    argv = list(o["command"])
    if argv and argv[0] == "--":
        argv = argv[1:]
    with usage_errors():
        check_env(env)
        check_command_size(argv, env)
    ws = _cluster(address).open(name)
    result = ws.exec(argv, env=env, workdir=o["workdir"], user=o["user"], timeout=o["timeout"],
                     output_limit=o["output_limit"] or None)
    if o["as_json"]:
        emit_json({"ok": True, "workspace": name, "node": ws.node, "result": result.to_dict()})
        return int(result.exit_code)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    if result.status in ("timed_out", "failed_to_start"):
        detail = result.error.get("message", "") if result.error else ""
        sys.stderr.write(f"microagent: command {result.status.replace('_', ' ')}{': ' + detail if detail else ''}\n")
    return int(result.exit_code)


def list_(address: str, *, running_only: bool = False, **options: Any) -> int:
    o = _take(options, ("as_json",))
    rows = [r for r in _cluster(address).list() if not running_only or r["state"] == "running"]
    emit({"ok": True, "workspaces": rows}, o["as_json"], lambda d: _row_text(d["workspaces"]))
    return 0


def delete(address: str, **options: Any) -> int:
    o = _take(options, ("name", "force", "as_json"))
    name = o["name"]
    out = _cluster(address).delete(name, force=o["force"])

    def text(d: dict[str, Any]) -> str:
        if d.get("lost"):
            return f"forgot {name} (lost with node {d['node'][:12]})"
        return f"deleted {name} on node {d['node'][:12]}" + (" (killed its VM first)" if d.get("killed") else "")
    emit({"ok": True, **out}, o["as_json"], text)
    return 0


# ------------------------------------------------------------------ cluster group


@click.group()
def cluster() -> None:
    """Workspaces across a Ray cluster: nodes, capacity, host agents (docs/cluster.md)."""


@cluster.command()
@click.option("--cluster", "address", default="auto", show_default=True, metavar="ADDRESS",
              help="the Ray cluster (auto: the one this host joined, or HOST:PORT of its head)")
@json_option
def status(address: str, as_json: bool) -> int:
    """Nodes (alive, agent, capabilities, free memory) and every workspace with its node."""
    doc = _cluster(address).status()

    def text(d: dict[str, Any]) -> str:
        lines = [f"cluster {d['address']}: {len(d['nodes'])} nodes"]
        for n in d["nodes"]:
            offer = n.get("offer") or {}
            caps = offer.get("capabilities") or {}
            what = ("agent: " + f"{caps.get('backend')}/{caps.get('accel')}, {offer.get('freeMiB')} MiB free, "
                    f"{offer.get('workspaces')}" + (f"/{offer['maxWorkspaces']}" if offer.get("maxWorkspaces")
                                                    else "") + " workspaces") if n["agent"] else (
                "no agent" if n["host"] else "not a microagent host")
            lines.append(f"  {n['nodeId'][:12]}  {n.get('hostname') or '-'}  "
                         f"{'alive' if n['alive'] else 'DEAD'}  {what}")
        return "\n".join(lines) + "\n\n" + _row_text(d["workspaces"])
    emit({"ok": True, **doc}, as_json, text)
    return 0


@cluster.command()
@click.option("--cluster", "address", default="auto", show_default=True, metavar="ADDRESS",
              help="the Ray cluster this host has joined")
@state_dir_option
@click.option("--max-workspaces", type=click.IntRange(min=1), default=None, help="the most workspaces it takes")
@click.option("--memory-budget", type=click.IntRange(min=0), default=None, metavar="MIB",
              help="guest memory it hands out (default: the host's less 1 GiB)")
@click.option("--kvm", type=click.IntRange(0, 1), default=None, help="advertise kvm=0/1 instead of what is detected")
@json_option
def agent(address: str, state_dir: str | None, max_workspaces: int | None, memory_budget: int | None,
          kvm: int | None, as_json: bool) -> int:
    """Start the host agent of this host's Ray node (its own state dir); it re-adopts running VMs."""
    from microagent.cluster import runtime

    runtime.connect(address)
    node_id = runtime.import_ray().get_runtime_context().get_node_id()
    handle = runtime.start_agent(node_id, state_dir=state_dir, max_workspaces=max_workspaces,
                                 memory_budget_mib=memory_budget,
                                 capabilities=None if kvm is None else {"kvm": kvm})
    status_, info = runtime.import_ray().get(handle.call.remote("ping"))
    emit({"ok": True, **info}, as_json,
         lambda d: f"host agent of node {d['nodeId'][:12]} ({d['hostname']}) runs; state dir {d['stateDir']}")
    return 0
