"""``microagent host`` and ``microagent doctor``."""

from __future__ import annotations

from typing import Any

import click

from microagent.cli.main import backend_option, json_option, state_dir_option
from microagent.cli.output import emit


def _host_text(doc: dict[str, Any]) -> str:
    host = doc["host"]
    tools = host["tools"]
    lines = [
        f"Backend:      {doc['backend']} ({doc['reason']})",
        f"Host:         {host['os']} {host['architecture']}",
        f"KVM:          {host['kvm']['kind']}: {host['kvm']['detail']}",
        f"vsock:        {'available' if host['vhost_vsock'] else 'unavailable'} (/dev/vhost-vsock)",
        f"TUN:          {'available' if host['tun'] else 'unavailable'}",
    ]
    for key in ("qemu", "firecracker", "pasta", "mke2fs"):
        t = tools.get(key)
        if t:
            lines.append(f"{key + ':':<13} {t['path'] + ' (' + t['version'] + ')' if t['path'] else t['error']}")
    k = doc["kernel"]
    lines.append(f"Kernel:       {k.get('status')} ({k.get('path')})")
    nets = ", ".join(f"{m} {'ready' if n['ready'] else 'not ready'}" for m, n in doc["networks"].items())
    lines.append(f"Networking:   {nets}")
    return "\n".join(lines)


def _doctor_text(doc: dict[str, Any]) -> str:
    lines = [f"Backend: {doc['backend']} ({doc['reason']})", f"Verdict: {doc['verdict']}"]
    for c in doc["checks"]:
        mark = "ok  " if c["ok"] else ("FAIL" if c["required"] else "warn")
        lines.append(f"  [{mark}] {c['name']}: {c['detail']}")
        if not c["ok"] and c.get("remediation"):
            lines.append(f"         fix: {c['remediation']}")
    return "\n".join(lines)


@click.command()
@backend_option
@state_dir_option
@json_option
def host(backend: str | None, state_dir: str | None, as_json: bool) -> int:
    """Show what this host can run and which backend is active, and why."""
    from microagent.host.doctor import report
    from microagent.paths import state_root

    doc = report(state_root(state_dir), backend)
    doc = {k: v for k, v in doc.items() if k != "checks"}
    doc["ok"] = True
    emit(doc, as_json, _host_text)
    return 0


@click.command()
@backend_option
@state_dir_option
@json_option
def doctor(backend: str | None, state_dir: str | None, as_json: bool) -> int:
    """Check the host for the active backend; exit 1 when a required check fails."""
    from microagent.host.doctor import report
    from microagent.paths import state_root

    doc = report(state_root(state_dir), backend)
    emit(doc, as_json, _doctor_text)
    return 0 if doc["ok"] else 1
