"""``microagent egress log|set``: a workspace's egress audit log and allowlist (docs/egress.md)."""

from __future__ import annotations

import json
import sys

import click

from microagent.cli.egress_options import egress_options
from microagent.cli.main import json_option, state_dir_option, usage_errors
from microagent.cli.output import emit


@click.group()
def egress() -> None:
    """Show the egress audit log of a workspace, or change its allowlist and secrets."""


@egress.command("log")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="keep printing new decisions until interrupted")
@json_option
@state_dir_option
def log(name: str, follow: bool, as_json: bool, state_dir: str | None) -> int:
    """The egress proxy's decisions for NAME, oldest first (one JSON object per line with --json)."""
    from microagent.egress.audit import follow as follow_records
    from microagent.egress.audit import format_record, read_records
    from microagent.workspace.egress import audit_dir
    from microagent.workspace.lifecycle import WorkspaceStore

    directory = audit_dir(WorkspaceStore(state_dir), name)

    def show(record: dict[str, object]) -> None:
        sys.stdout.write((json.dumps(record) if as_json else format_record(record)) + "\n")
        sys.stdout.flush()

    for record in read_records(directory):
        show(record)
    if follow:
        try:
            for record in follow_records(directory):
                show(record)
        except KeyboardInterrupt:
            pass
    return 0


@egress.command("set")
@click.argument("name")
@egress_options
@json_option
@state_dir_option
def set_(name: str, egress_allow: tuple[str, ...], egress_allow_cidr: tuple[str, ...], egress_deny_all: bool,
         secret: tuple[str, ...], secret_host: tuple[str, ...], as_json: bool, state_dir: str | None) -> int:
    """Replace NAME's egress allowlist and/or its secrets; a running workspace applies them from
    its next connection (with --secret, the values are read now and handed to its proxy)."""
    from microagent.egress.options import policy_from_options
    from microagent.workspace.egress import set_policy
    from microagent.workspace.lifecycle import WorkspaceStore

    allowlist = bool(egress_allow or egress_allow_cidr or egress_deny_all)
    with usage_errors():
        if not allowlist and not secret and not secret_host:
            raise click.UsageError("give --egress-allow, --egress-allow-cidr, --egress-deny-all or --secret")
        policy = policy_from_options("isolated", egress_allow, egress_allow_cidr, egress_deny_all, secret,
                                     secret_host)
    result = set_policy(WorkspaceStore(state_dir), name, policy, allowlist=allowlist,
                        secrets=bool(secret or secret_host))

    def text(d: dict[str, object]) -> str:
        wire = result["egress"]
        hosts = ", ".join(wire["allowHosts"]) or "nothing"
        cidrs = f" (private ranges: {', '.join(wire['allowCidrs'])})" if wire["allowCidrs"] else ""
        bound = "; ".join(f"secret {s['name']} to {', '.join(s['hosts'])}" for s in wire.get("secrets") or ())
        when = "now" if result["applied"] else "at its next start"
        return f"{name}: egress allows {hosts}{cidrs}{'; ' + bound if bound else ''}; applies {when}"
    emit({"ok": True, "name": name, **result}, as_json, text)
    return 0
