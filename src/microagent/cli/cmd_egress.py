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
    """Show the egress audit log of a workspace, or change its allowlist."""


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
         as_json: bool, state_dir: str | None) -> int:
    """Replace NAME's egress allowlist; a running workspace applies it from its next connection."""
    from microagent.egress.options import policy_from_options
    from microagent.workspace.egress import set_policy
    from microagent.workspace.lifecycle import WorkspaceStore

    with usage_errors():
        policy = policy_from_options("isolated", egress_allow, egress_allow_cidr, egress_deny_all)
        if policy is None:
            raise click.UsageError("give --egress-allow, --egress-allow-cidr or --egress-deny-all")
    result = set_policy(WorkspaceStore(state_dir), name, policy)

    def text(d: dict[str, object]) -> str:
        hosts = ", ".join(policy.allow_hosts) or "nothing"
        cidrs = f" (private ranges: {', '.join(policy.allow_cidrs)})" if policy.allow_cidrs else ""
        when = "now" if result["applied"] else "at its next start"
        return f"{name}: egress allows {hosts}{cidrs}; applies {when}"
    emit({"ok": True, "name": name, **result}, as_json, text)
    return 0
