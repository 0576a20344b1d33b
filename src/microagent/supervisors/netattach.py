"""Attaching a workspace to its network at boot, and cutting it off again.

At boot (before the VMM is spawned, so failures cost nothing): check the
mode's preconditions, bind every published host port (a port in use is a
``conflict`` before boot), set up NAT (lease, TAP, rules), and write the
per-boot config disk carrying the guest's addressing (and its MAC, which guest
init sets: each workspace and each fork has its own; after a restore the same
addressing goes to guest init over the channel).  The listening sockets
are handed to the channel helper, which bridges them over the channel.
``user`` is slirp inside QEMU (nothing to set up here) or, for a backend
whose ``user_provider`` is ``pasta``, a network namespace with pasta attached
(:mod:`microagent.network.pasta`); the VMM is then started inside it.

Teardown removes the TAP and rules, or kills pasta and deletes the
namespace; the helper's death closes the listeners.
``network.json`` in the runtime directory records what was set up, so a
later command (or ``gc``) can clean up after a crash.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from msgspec import Struct, field, structs

from microagent.errors import Permanent
from microagent.fsutil import atomic_write
from microagent.network.plan import NetworkPlan, guest_mac, host_nameservers, tap_name
from microagent.runtime_state import RuntimeDir, read_json, write_json_atomic
from microagent.vmkit.types import Config

CONFIG_DISK_BYTES = 64 * 1024


class Attachment(Struct):
    plan: NetworkPlan
    listeners: list[tuple[socket.socket, int]] = field(default_factory=list)  # (socket, guest port)
    #: extra facts for network.json (pasta's PID and start time)
    record: dict[str, Any] = field(default_factory=dict)

    def close_listeners(self) -> None:
        for sock, _ in self.listeners:
            sock.close()
        self.listeners.clear()


def check(cfg: Config, user_provider: str = "slirp") -> None:
    """Preconditions of the mode, before anything changes.

    :raises PolicyDenied: nat without privilege or ip_forward; pasta without root.
    :raises NotFound: a missing tool (nft, pasta, ...).
    """
    if cfg.network.mode == "nat":
        from microagent.network import nat

        nat.check_preconditions()
    elif cfg.network.mode == "user" and user_provider == "pasta":
        from microagent.network import pasta

        pasta.check_preconditions()


def attach(cfg: Config, rt: RuntimeDir, workspace: str, user_provider: str = "slirp") -> Attachment:
    """Bind published ports and set up the network; all or nothing.

    :raises Conflict: a published host port is in use.
    :raises PolicyDenied: nat or pasta preconditions.
    """
    check(cfg, user_provider)
    mac = guest_mac(rt.path) if cfg.network.mode in ("user", "nat") else ""
    attachment = Attachment(NetworkPlan(mode=cfg.network.mode,
                                        provider=user_provider if cfg.network.mode == "user" else "",
                                        allow_host_loopback=cfg.network.allowHostLoopback, mac=mac))
    try:
        if cfg.network.portForwards:  # the channel's forwarding code (and logging) only for a publication
            from microagent.channel.forward import bind_listener

            for fwd in cfg.network.portForwards:
                attachment.listeners.append((bind_listener(fwd.host, fwd.hostPort), fwd.guestPort))
        allow_host = cfg.network.allowHostLoopback
        if cfg.network.mode == "nat":
            from microagent.network import nat

            tap = tap_name(rt.path)
            dns = host_nameservers(_resolv_conf())
            lease, kind = nat.setup(Path(cfg.stateDir), workspace, tap, dns=dns, allow_host=allow_host)
            attachment.plan = NetworkPlan(mode="nat", tap=tap, lease=lease, dns=dns, firewall=kind,
                                          allow_host_loopback=allow_host, mac=mac)
        elif cfg.network.mode == "user" and user_provider == "pasta":
            attachment.plan, attachment.record = _attach_pasta(rt, workspace, allow_host)
            attachment.plan = structs.replace(attachment.plan, mac=mac)
    except BaseException:
        attachment.close_listeners()
        raise
    write_json_atomic(rt.path / "network.json", {
        **attachment.plan.describe(),
        **attachment.record,
        "published": [{"host": f.host, "hostPort": f.hostPort, "guestPort": f.guestPort, "protocol": "tcp"}
                      for f in cfg.network.portForwards],
    })
    return attachment


def _attach_pasta(rt: RuntimeDir, workspace: str, allow_host: bool) -> tuple[NetworkPlan, dict[str, Any]]:
    """The workspace's namespace with the VMM's TAP, and pasta attached to it."""
    from microagent.network import pasta

    namespace = pasta.namespace_name(rt.path)
    pasta.create(namespace)
    try:
        record = _start_pasta(rt, namespace, allow_host)
    except BaseException:
        pasta.delete(namespace)
        raise
    return NetworkPlan(mode="user", provider="pasta", namespace=namespace, tap=pasta.VMM_TAP,
                       allow_host_loopback=allow_host), record


def _start_pasta(rt: RuntimeDir, namespace: str, allow_host: bool) -> dict[str, Any]:
    """pasta attached to ``namespace`` and wired to the VMM's TAP; its PID and start time."""
    from microagent.host import process
    from microagent.network import pasta

    log = rt.path / "pasta.log"
    argv = pasta.pasta_argv(namespace, rt.path / "pasta.pid", pasta.pasta_binary() or "pasta",
                            map_host_loopback=allow_host, dns_host=pasta.host_resolver(_resolv_conf()))
    proc = process.spawn_detached(argv, cwd=rt.path, log_path=log)
    try:
        pasta.wait_for_pasta(namespace, proc, log, allow_gateway=allow_host)
        ref = process.ref_for(proc.pid)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise
    return {"pastaPid": ref.pid, "pastaStarttime": ref.starttime}


def _resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


def revive(rt: RuntimeDir) -> list[str]:
    """Restart what a running workspace's network needs and lost: a dead pasta.

    Called by ``inspect`` for a running VM (as the channel helper is); returns what was restarted.
    """
    from microagent.host import process
    from microagent.network import pasta

    recorded: dict[str, Any] | None = read_json(rt.path / "network.json")
    if not recorded or recorded.get("mode") != "user" or not recorded.get("namespace"):
        return []
    ref = process.ProcessRef(int(recorded.get("pastaPid") or 0), int(recorded.get("pastaStarttime") or 0))
    if process.is_alive(ref) or not pasta.exists(str(recorded["namespace"])):
        return []
    recorded.update(_start_pasta(rt, str(recorded["namespace"]), bool(recorded.get("allowHostLoopback"))))
    write_json_atomic(rt.path / "network.json", recorded)
    return ["pasta"]


def rebind_published(config: dict[str, Any]) -> list[tuple[socket.socket, int]]:
    """Listeners for the published ports of ``config`` (as ``runtime.json`` records it), for a new helper.

    A port someone else took meanwhile is skipped: the workspace keeps running.
    """
    from microagent.channel.forward import bind_listener
    from microagent.errors import Conflict

    out = []
    network = config.get("network") or {}
    for fwd in network.get("portForwards") or ():
        try:
            out.append((bind_listener(str(fwd.get("host", "127.0.0.1")), int(fwd["hostPort"])),
                        int(fwd["guestPort"])))
        except (Conflict, KeyError, ValueError):
            continue
    return out


def write_config_disk(rt: RuntimeDir, hostname: str, network: dict[str, Any], env: tuple[str, ...] = (),
                      proxy: dict[str, Any] | None = None, service: dict[str, Any] | None = None,
                      mounts: list[dict[str, Any]] | None = None) -> Path:
    """The per-boot config disk: one JSON object, NUL-padded (docs/protocol.md); ``proxy``:
    the egress proxy port guest init listens on (docs/egress.md); ``service``: the command
    guest init starts and restarts (docs/services.md); ``mounts``: volumes and host folders
    guest init mounts (docs/volumes.md)."""
    doc = json.dumps({"hostname": hostname, "env": list(env), "network": network,
                      **({"proxy": proxy} if proxy else {}),
                      **({"service": service} if service else {}),
                      **({"mounts": mounts} if mounts else {})}).encode()
    if len(doc) >= CONFIG_DISK_BYTES:
        raise Permanent(f"the per-boot config ({len(doc)} bytes) does not fit the {CONFIG_DISK_BYTES // 1024} KiB "
                        "config disk", "pass fewer or shorter -e values")
    path = rt.path / "config.disk"
    atomic_write(path, doc + b"\0" * (CONFIG_DISK_BYTES - len(doc)))  # 0600: it carries -e values
    return path


def detach(rt: RuntimeDir, workspace: str) -> list[str]:
    """Remove what ``network.json`` records: TAP and firewall rules, or pasta and its
    namespace; returns what went."""
    recorded: dict[str, Any] | None = read_json(rt.path / "network.json")
    if not recorded:
        return []
    if recorded.get("mode") == "nat":
        from microagent.network import nat

        return nat.teardown(workspace, str(recorded.get("tap") or tap_name(rt.path)))
    if recorded.get("mode") == "user" and recorded.get("namespace"):
        return _detach_pasta(recorded)
    return []


def _detach_pasta(recorded: dict[str, Any]) -> list[str]:
    """Kill pasta (if it is still the recorded process) and delete the namespace's name.

    A VMM still inside (quarantine) keeps the namespace alive but unreachable:
    pasta was its only way out.
    """
    import signal

    from microagent.host import process
    from microagent.network import pasta

    removed = []
    if recorded.get("pastaPid") is not None and recorded.get("pastaStarttime") is not None:
        ref = process.ProcessRef(int(recorded["pastaPid"]), int(recorded["pastaStarttime"]))
        if process.send_signal(ref, signal.SIGTERM):
            if not process.wait_gone(ref, 2.0):
                process.send_signal(ref, signal.SIGKILL)
                process.wait_gone(ref, 2.0)
            removed.append("pasta")
    if pasta.delete(str(recorded["namespace"])):
        removed.append(f"netns {recorded['namespace']}")
    return removed


def release(state_root: Path, workspace: str) -> None:
    """Free the NAT lease (on delete)."""
    if (state_root / "network" / "leases.json").exists():
        from microagent.network import nat

        nat.release(state_root, workspace)
