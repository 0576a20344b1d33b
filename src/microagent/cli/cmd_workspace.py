"""Named workspace commands: create, start, halt, stop, kill, quarantine, delete,
list/ls/ps, status, wait, logs, events, cp.

Thin: parse options, call :class:`microagent.workspace.lifecycle.WorkspaceStore`
(or :mod:`microagent.workspace.sessions` for ``cp``), render text or one
JSON document. ``exec`` and ``connect`` are in :mod:`.cmd_exec`.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from microagent.cli import cmd_cluster
from microagent.cli.egress_options import egress_options, egress_policy
from microagent.cli.service_options import check_services, check_volumes, setup_service_options, volume_option
from microagent.cli.main import backend_option, json_option, state_dir_option, usage_errors
from microagent.cli.output import emit, emit_json
from microagent.cli.params import SECONDS

#: ``start --wait`` and ``wait``: exit 0 when the workspace ended in one of these.
CLEAN_END_STATES = ("stopped", "halted")


def supervisor_option(f: Any) -> Any:
    return click.option("--supervisor", default=None, help="path of the supervisor executable to use")(f)


def common(f: Any) -> Any:
    """``--json``, ``--state-dir`` and ``--supervisor`` on every workspace command."""
    return json_option(state_dir_option(supervisor_option(f)))


def _store(state_dir: str | None, supervisor: str | None) -> Any:
    from microagent.workspace.lifecycle import WorkspaceStore

    return WorkspaceStore(state_dir, supervisor)


def _mib(value: Any) -> str:
    return f"{value} MiB"


# ------------------------------------------------------------------ create


@click.command()
@cmd_cluster.on_cluster(cmd_cluster.create, require=True)
@click.argument("name", required=False)
@click.option("-f", "--file", "spec_file", default=None, metavar="FILE",
              help="create from a spec file (microagent.yaml, docs/spec.md) instead of flags")
@click.option("--image", default="builtin:busybox", show_default=True, help="image reference")
@click.option("--profile", default=None, help="tiny | small | medium | large (default small)")
@click.option("--cpus", type=int, default=None, help="vCPUs (overrides the profile)")
@click.option("--memory", type=int, default=None, help="memory in MiB (overrides the profile)")
@click.option("--disk-size", type=int, default=None, help="root disk size in MiB (overrides the profile)")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="environment for every process in the guest")
@click.option("--network", default="isolated", show_default=True,
              help="isolated (no NIC) | user (pasta: internet only; root) | nat (TAP + masquerade; root)")
@click.option("-p", "--publish", multiple=True, metavar="[HOST_IP:]HOST_PORT:GUEST_PORT[/tcp]",
              help="publish a guest TCP port on the host (default host IP 127.0.0.1)")
@click.option("--allow-host-loopback", is_flag=True,
              help="let the guest reach the host through its gateway (user: the host's loopback); off by default")
@egress_options
@setup_service_options
@volume_option
@click.option("--from-snapshot", "from_snapshot", default=None, metavar="WORKSPACE:TAG",
              help="fork: NAME runs from that snapshot (its own disk copy, copy-on-write memory)")
@click.option("--arch", default=None, metavar="ARCH",
              help="guest architecture: x86_64 or aarch64 (default: this host's; another is emulated, slowly)")
@backend_option
@common
def create(name: str, image: str, profile: str | None, cpus: int | None, memory: int | None,
           disk_size: int | None, env: tuple[str, ...], network: str, publish: tuple[str, ...],
           allow_host_loopback: bool, egress_allow: tuple[str, ...], egress_allow_cidr: tuple[str, ...],
           egress_deny_all: bool, secret: tuple[str, ...], secret_host: tuple[str, ...],
           setup: tuple[str, ...], service: str | None, restart: str, volume: tuple[str, ...],
           spec_file: str | None,
           from_snapshot: str | None, arch: str | None, backend: str | None, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """Create workspace NAME: build its disk and manifest (state prepared); boot nothing.

    With --from-snapshot, NAME is a fork of that snapshot and is left running."""
    store = _store(state_dir, supervisor)
    if spec_file is not None:
        from microagent.cli.cmd_apply import create_from_spec

        return create_from_spec(store, name, spec_file, as_json)
    if name is None:
        raise click.UsageError("missing argument NAME (or give a spec file with -f)")
    if from_snapshot is not None:
        from microagent.workspace.snapshots import fork_publish, parse_source

        with usage_errors():  # its own -p, never the source's; none for an isolated one
            fork_publish(store.manifest(parse_source(from_snapshot)[0]), publish)
        t = store.fork(name, from_snapshot, publish=publish)
        emit({"ok": True, **t.to_json()}, as_json,
             lambda d: f"created {name} (running, pid {t.pid}): forked from {from_snapshot}")
        return 0
    with usage_errors():
        store.check_create_input(name, profile=profile, memory_mib=memory, cpus=cpus, disk_size_mib=disk_size,
                                 env=env, network=network, publish=publish,
                                 allow_host_loopback=allow_host_loopback)
        check_services(setup, service, restart)
        check_volumes(volume)
        egress = egress_policy(network, egress_allow, egress_allow_cidr, egress_deny_all, secret, secret_host)
    manifest = store.create(name, image=image, profile=profile, cpus=cpus, memory_mib=memory,
                            disk_size_mib=disk_size, env=env, network=network, publish=publish,
                            allow_host_loopback=allow_host_loopback, backend=backend, arch=arch, egress=egress,
                            setup=setup, service=service, restart=restart, volumes=volume)
    doc = {"ok": True, "state": "prepared", "diskPath": str(store.disk_path(name)),
           "workspace": manifest.to_json()}

    def text(d: dict[str, Any]) -> str:
        r = d["workspace"]["resources"]
        return (f"created {name} (prepared): {image}, profile {manifest.profile}, "
                f"{r['memoryMiB']} MiB, {r['cpuCount']} vCPU, disk {r['diskSizeMiB']} MiB, "
                f"backend {manifest.backend}\nstart it with: microagent start {name}")
    emit(doc, as_json, text)
    return 0


# ------------------------------------------------------------------ start / wait


def _end_code(state: str) -> int:
    return 0 if state in CLEAN_END_STATES else 1


@click.command()
@click.argument("name")
@click.option("--wait", "wait_", is_flag=True,
              help="after it is running, block until it stops; exit 0 if stopped/halted, 1 if failed/quarantined")
@click.option("--boot-timeout", type=SECONDS, default=60.0, show_default=True,
              help="give up (and kill the VM) if the guest is not ready after S seconds")
@click.option("--from-snapshot", "from_snapshot", default=None, metavar="TAG",
              help="restore NAME's snapshot TAG (its disk and memory) instead of booting")
@click.option("--cold", is_flag=True,
              help="boot, even when NAME never booted and its image's boot snapshot could be restored")
@common
def start(name: str, wait_: bool, boot_timeout: float, from_snapshot: str | None, cold: bool, as_json: bool,
          state_dir: str | None, supervisor: str | None) -> int:
    """Boot workspace NAME; returns once its guest channel is ready."""
    store = _store(state_dir, supervisor)
    t = store.start(name, boot_timeout=boot_timeout, from_snapshot=from_snapshot, cold=cold)
    doc: dict[str, Any] = {"ok": True, **t.to_json()}
    boot = (t.runtime or {}).get("bootSeconds")
    line = f"{name} running (pid {t.pid}" + (f", booted in {boot:.1f}s" if isinstance(boot, (int, float)) else "") + ")"
    if not wait_:
        emit(doc, as_json, lambda d: line)
        return 0
    if not as_json:
        sys.stdout.write(line + "\nwaiting for it to stop (Ctrl-C stops waiting, not the workspace)\n")
        sys.stdout.flush()
    final = store.wait(name)
    if as_json:
        emit_json({**doc, "final": final.to_json()})
    else:
        sys.stdout.write(f"{name} {final.state.value}" + (f": {final.detail}" if final.detail else "") + "\n")
    return _end_code(final.state.value)


@click.command()
@click.argument("name")
@click.option("--timeout", type=SECONDS, default=None, help="give up after S seconds")
@common
def wait(name: str, timeout: float | None, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """Block until NAME is no longer running; exit 0 if stopped/halted, 1 otherwise."""
    final = _store(state_dir, supervisor).wait(name, timeout=timeout)
    emit({"ok": True, **final.to_json()}, as_json,
         lambda d: f"{name} {d['state']}" + (f": {d['detail']}" if d["detail"] else ""))
    return _end_code(final.state.value)


# ------------------------------------------------------------------ transitions


def _transition_command(op: str, help_text: str) -> click.Command:
    @click.command(name=op, help=help_text)
    @click.argument("name")
    @common
    def cmd(name: str, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
        t = getattr(_store(state_dir, supervisor), op)(name)
        extra = f" (pid {t.pid} kept)" if op == "quarantine" else ""
        emit({"ok": True, **t.to_json()}, as_json,
             lambda d: f"{name} {d['state']}{extra}" + (f": {d['detail']}" if d["detail"] else ""))
        return 0
    return cmd


halt = _transition_command("halt", "Shut NAME down cleanly through guest init (disk flushed): halted.")
stop = _transition_command("stop", "SIGTERM the VMM of NAME, wait a grace period: stopped (failed if it survives).")
kill = _transition_command("kill", "SIGKILL the VMM of NAME: stopped.")
quarantine = _transition_command(
    "quarantine", "Cut every host path into NAME, keep its VM process and PID: quarantined.")


@click.command()
@cmd_cluster.on_cluster(cmd_cluster.delete)
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="kill a running VM first")
@common
def delete(name: str, force: bool, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """Delete NAME's disk and state (refused while its VM runs, unless -f). Missing: ok."""
    out = _store(state_dir, supervisor).delete(name, force=force)

    def text(d: dict[str, Any]) -> str:
        if not d["deleted"]:
            return f"{name} does not exist; nothing to delete"
        return f"deleted {name}" + (" (killed its VM first)" if d["killed"] else "")
    emit({"ok": True, **out}, as_json, text)
    return 0


# ------------------------------------------------------------------ list / status


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no workspaces"
    header = ("NAME", "STATE", "PID", "BACKEND", "IMAGE", "PROFILE", "MEMORY", "CPUS", "DISK", "BY")
    lines = [header]
    for r in rows:
        res = r["resources"]
        lines.append((r["name"], r["state"], str(r["pid"] or "-"), r["backend"], r["image"], r["profile"],
                      _mib(res["memoryMiB"]), str(res["cpuCount"]), _mib(res["diskSizeMiB"]),
                      r.get("createdBy") or "-"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)


def _list_command(name: str, running_only: bool, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @cmd_cluster.on_cluster(functools.partial(cmd_cluster.list_, running_only=running_only))
    @common
    def cmd(as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
        rows = _store(state_dir, supervisor).list(running_only=running_only)
        emit({"ok": True, "workspaces": rows}, as_json, lambda d: _table(d["workspaces"]))
        return 0
    return cmd


list_ = _list_command("list", False, "List every workspace with its state.")
ls = _list_command("ls", False, "List every workspace with its state (alias of list).")
ps = _list_command("ps", True, "List workspaces whose VM is running.")



def _attached(att: dict[str, Any]) -> str:
    """One line of what the supervisor set up for the running VM's network ('' for none)."""
    if att.get("mode") == "user":
        where = (f" in netns {att['namespace']} (pasta pid {att.get('pastaPid')})"
                 if att.get("namespace") else "")
        return f"guest {att.get('guestAddress')} via {att.get('gateway')}, {att.get('provider', 'slirp')}{where}"
    if att.get("mode") == "nat":
        return (f"guest {att.get('guestAddress')} via {att.get('hostAddress')} on TAP {att.get('tap')}, "
                f"rules in {att.get('firewall') or 'nft'}")
    return ""

def _status_text(d: dict[str, Any]) -> str:
    res = d["resources"]
    rd = d["readiness"]
    ver = d["verification"]
    lines = [
        f"name:         {d['name']}",
        f"state:        {d['state']}" + (f" ({d['detail']})" if d["detail"] else ""),
        f"pid:          {d['pid'] or '-'}",
        f"backend:      {d['backend']}",
        f"image:        {d['image']['ref']} ({d['image']['digest'][:19]}…)",
        f"profile:      {d['profile']}: {res['memoryMiB']} MiB, {res['cpuCount']} vCPU, disk {res['diskSizeMiB']} MiB",
        f"disk:         {d['disk']['path']}" + (f" ({d['disk'].get('allocatedMiB')} MiB used)" if "allocatedMiB" in d["disk"] else " (missing)"),
        f"network:      {d['network']['mode']}"
        + (f", published {', '.join(d['network']['publish'])}" if d["network"].get("publish") else "")
        + (f"\n  attached:   {_attached(d['network']['attached'])}"
           if d.get("alive") and _attached(d["network"].get("attached") or {}) else "")
        + _egress_text(d["network"].get("egress")),
        "readiness:    " + ", ".join(f"{k}={'yes' if v.get('ready') else 'no'}" for k, v in rd.items()),
        f"channel:      {d['channel']['path']}",
        f"serial log:   {d['serialLog']}",
        "snapshots:    " + (", ".join(s["tag"] for s in d.get("snapshots", [])) or "-"),
        *(["volumes:      " + ", ".join(d["volumes"])] if d.get("volumes") else []),
        "verification: " + ("ok" if ver["ok"] else "DIVERGED: " + ", ".join(ver["divergence"])),
    ]
    for key in ("kernel", "rootfsBase", "init"):
        v = ver[key]
        lines.append(f"  {key:<11} {'ok' if v['ok'] else 'CHANGED'}  {v['path']}  {v['recorded'][:19]}…")
    return "\n".join(lines + _services_text(d))


def _services_text(d: dict[str, Any]) -> list[str]:
    lines = []
    if "setup" in d:
        s = d["setup"]
        line = f"setup:        {s['state']} ({len(s['commands'])} command{'s' if len(s['commands']) != 1 else ''})"
        if s["state"] == "failed":
            line += f": command {s.get('step')} ({s.get('command')!r}) exited with {s.get('exitCode')}"
            tail = str(s.get("outputTail") or "").rstrip().splitlines()[-10:]
            line += "".join(f"\n  | {t}" for t in tail)
        lines.append(line)
    if "service" in d:
        s = d["service"]
        last = s.get("lastExit") or {}
        ended = (f", last exit {'signal ' + str(last['signal']) if 'signal' in last else 'code ' + str(last.get('code'))}"
                 if last else "")
        lines.append(f"service:      {s['state']}" + (f" (pid {s['pid']})" if s.get("pid") else "")
                     + f", restart {s['restart']}, {s.get('restarts', 0)} restarts{ended}"
                     + (f" ({s['reason']})" if s.get("reason") else "") + f"\n  command:    {s['command']}")
    return lines


def _egress_text(egress: dict[str, Any] | None) -> str:
    """The egress lines of ``status``: the allowlist, and each secret's name and hosts (never a value)."""
    if egress is None:
        return ""
    text = "\n  egress:     allows " + (", ".join(egress.get("allowHosts") or ()) or "nothing")
    if egress.get("allowCidrs"):
        text += f" (private ranges: {', '.join(egress['allowCidrs'])})"
    for secret in egress.get("secrets") or ():
        text += f"\n  secret:     {secret['name']} -> {', '.join(secret['hosts'])} (from {secret['source']})"
    return text


@click.command()
@click.argument("name")
@common
def status(name: str, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """State, readiness, PID, resources, disk and verification of NAME."""
    from microagent.workspace.status import workspace_status

    doc = workspace_status(_store(state_dir, supervisor), name)
    emit({"ok": True, **doc}, as_json, _status_text)
    return 0


# ------------------------------------------------------------------ logs / events


def _follow_help(what: str) -> Callable[[Any], Any]:
    return click.option("-f", "--follow", is_flag=True, help=f"keep printing new {what} until the workspace is deleted or Ctrl-C")


@click.command()
@click.argument("name")
@_follow_help("output")
@click.option("--tail", "tail_lines", type=click.IntRange(min=0), default=None, metavar="LINES",
              help="only the last LINES lines")
@click.option("--bytes", "max_bytes", type=click.IntRange(min=1), default=None, metavar="BYTES",
              help="read at most the last BYTES of the log (default 1 MiB)")
@click.option("--service", "service", is_flag=True,
              help="the output of NAME's --service instead (kept in the guest, at most 1 MiB; NAME must run; "
                   "-f polls it every second)")
@common
def logs(name: str, follow: bool, tail_lines: int | None, max_bytes: int | None, service: bool, as_json: bool,
         state_dir: str | None, supervisor: str | None) -> int:
    """The guest serial console log of NAME (its end: the log itself is capped, see docs/state.md)."""
    from microagent.errors import InvalidRequest
    from microagent.workspace.lifecycle import DEFAULT_LOG_TAIL_BYTES

    if as_json and follow:
        with usage_errors():
            raise InvalidRequest("logs -f cannot be combined with --json", "drop -f, or drop --json")
    store = _store(state_dir, supervisor)
    if service:
        return _service_logs(store, name, follow, tail_lines, max_bytes, as_json)
    chunks = store.logs(name, follow=follow, max_bytes=max_bytes or DEFAULT_LOG_TAIL_BYTES)
    head = next(chunks)  # the bounded tail first; with -f, what the guest writes next
    if tail_lines is not None:
        head = b"".join(head.splitlines(keepends=True)[-tail_lines:]) if tail_lines else b""
    if as_json:
        emit_json({"ok": True, "name": name, "path": str(store.runtime_path(name) / "serial.log"),
                   "log": head.decode("utf-8", "replace")})
        return 0
    out = sys.stdout.buffer
    out.write(head)
    out.flush()
    for chunk in chunks:  # only with -f
        out.write(chunk)
        out.flush()
    return 0


def _service_logs(store: Any, name: str, follow: bool, tail_lines: int | None, max_bytes: int | None,
                  as_json: bool) -> int:
    from microagent.workspace.services import follow_service_log, service_log

    rotated, current = service_log(store, name)
    log = rotated + current
    if max_bytes is not None:
        log = log[-max_bytes:]
    if tail_lines is not None:
        log = b"".join(log.splitlines(keepends=True)[-tail_lines:]) if tail_lines else b""
    if as_json:
        emit_json({"ok": True, "name": name, "service": True, "log": log.decode("utf-8", "replace")})
        return 0
    sys.stdout.buffer.write(log)
    sys.stdout.flush()
    if follow:  # polled from the guest every second until the workspace stops
        for chunk in follow_service_log(store, name, offset=len(current)):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    return 0


@click.command()
@click.argument("name")
@_follow_help("events")
@common
def events(name: str, follow: bool, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """The event timeline of NAME (with --json -f: one JSON object per line)."""
    store = _store(state_dir, supervisor)
    if as_json and not follow:
        emit_json({"ok": True, "name": name, "events": list(store.events(name))})
        return 0
    for ev in store.events(name, follow=follow):
        if as_json:
            line = json.dumps(ev, sort_keys=True)
        else:
            line = f"{ev.get('observedAt', '')}  {ev.get('state', ''):<12} {ev.get('detail', '')}".rstrip()
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return 0


# ------------------------------------------------------------------ cp


@click.command()
@click.argument("src")
@click.argument("dst")
@common
def cp(src: str, dst: str, as_json: bool, state_dir: str | None, supervisor: str | None) -> int:
    """Copy a file into or out of a running workspace: one side is NAME:/abs/path."""
    from microagent.workspace.sessions import check_cp_args, copy

    with usage_errors():
        check_cp_args(src, dst)
    out = copy(_store(state_dir, supervisor), src, dst)
    emit({"ok": True, **out}, as_json,
         lambda d: f"copied {d['bytes']} bytes: {d['source']} -> "
                   + (f"{d['workspace']}:{d['destination']}" if d["direction"] == "in" else d["destination"]))
    return 0
