"""``commit``, ``clone`` and ``stats`` (docs/commit.md): adapters over the library."""

from __future__ import annotations

from typing import Any

import click

from microagent.cli.cmd_workspace import _store, common
from microagent.cli.output import emit


def _commit_text(d: dict[str, Any]) -> str:
    c = d["changes"]
    kind = f"a full layer ({d['fullReason']})" if d["full"] else f"a layer of changes against {d['base']}"
    where = {"cache": "the image cache", "oci-layout": "the OCI layout",
             "registry": f"the image cache and its registry ({d.get('blobsPushed', 0)} blobs sent)"}[d["destination"]]
    return (f"committed {d['workspace']} as {d['reference']} into {where}\n"
            f"digest {d['digest']}: {kind}, {c['added']} added, {c['changed']} changed, {c['deleted']} deleted "
            f"({d['layer']['size']} bytes)")


@click.command()
@click.argument("name")
@click.argument("image_ref")
@click.option("--push", is_flag=True, help="also send the image to the registry IMAGE_REF names")
@click.option("--insecure", is_flag=True, help="plain HTTP to this registry even if not loopback")
@common
def commit(name: str, image_ref: str, push: bool, insecure: bool, as_json: bool, state_dir: str | None,
           supervisor: str | None) -> int:
    """Save the disk of NAME (prepared, stopped or halted) as image IMAGE_REF.

    IMAGE_REF is a name for the image cache (then 'microagent run IMAGE_REF' boots it;
    with --push it is also sent to its registry) or oci:PATH[:TAG] (an OCI image layout).
    The same disk content gives the same digest.
    """
    from microagent.workspace.commit import commit as do_commit

    doc = do_commit(_store(state_dir, supervisor), name, image_ref, push=push, allow_insecure=insecure)
    emit({"ok": True, **doc}, as_json, _commit_text)
    return 0


@click.command()
@click.argument("name")
@click.argument("new")
@common
def clone(name: str, new: str, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """Copy workspace NAME (prepared, stopped or halted) as NEW (prepared)."""
    from microagent.workspace.clone import clone as do_clone

    manifest = do_clone(_store(state_dir, supervisor), name, new)
    emit({"ok": True, "name": manifest.name, "clonedFrom": name, "state": "prepared"}, as_json,
         lambda d: f"cloned {name} as {new} (prepared); start it with 'microagent start {new}'")
    return 0


def _bytes(n: Any) -> str:
    return f"{int(n) / (1024 * 1024):.1f} MiB" if isinstance(n, int) else "-"


def _stats_text(d: dict[str, Any]) -> str:
    lines = [f"{d['name']}: {d['state']}",
             f"disk        {_bytes(d['disk'].get('allocatedBytes'))} allocated of "
             f"{_bytes(d['disk'].get('apparentBytes'))}"]
    for role, p in d["processes"].items():
        lines.append(f"{role:<11} pid {p['pid']}: cpu {p['cpuSeconds']:.2f} s, rss {_bytes(p.get('rssBytes'))}, "
                     f"pss {_bytes(p.get('pssBytes'))}")
    if d["processes"]:
        lines.append(f"total       cpu {d['cpuSeconds']:.2f} s, rss {_bytes(d['rssBytes'])}, pss {_bytes(d['pssBytes'])}")
    mem = d.get("guestMemory")
    if mem is not None:
        lines.append(f"guest mem   {mem['error']}" if "error" in mem else
                     f"guest mem   {_bytes(mem.get('usedBytes'))} used of {_bytes(mem.get('totalBytes'))}, "
                     f"{_bytes(mem.get('availableBytes'))} available")
    net = d.get("network")
    if net is not None:
        lines.append(f"network     {net['interface']}: guest received {net['guestRxBytes']} bytes, "
                     f"sent {net['guestTxBytes']} bytes")
    return "\n".join(lines)


@click.command()
@click.argument("name")
@common
def stats(name: str, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """CPU time and memory of NAME's VMM and helpers, guest memory, disk and network use."""
    from microagent.workspace.stats import stats as do_stats

    emit({"ok": True, **do_stats(_store(state_dir, supervisor), name)}, as_json, _stats_text)
    return 0
