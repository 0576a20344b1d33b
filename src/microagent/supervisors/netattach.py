"""Attaching a workspace to its network at boot, and cutting it off again.

At boot (before the VMM is spawned, so failures cost nothing): check the
mode's preconditions, bind every published host port (a port in use is a
``conflict`` before boot), set up NAT (lease, TAP, rules), and write the
per-boot config disk carrying the guest's addressing.  The listening sockets
are handed to the channel helper, which bridges them over the channel.

Teardown removes the TAP and rules; the helper's death closes the listeners.
``network.json`` in the runtime directory records what was set up, so a
later command (or ``gc``) can clean up after a crash.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microagent.errors import Permanent
from microagent.network.plan import NetworkPlan, host_nameservers, tap_name
from microagent.runtime_state import RuntimeDir, read_json, write_json_atomic
from microagent.vmkit.types import Config

CONFIG_DISK_BYTES = 64 * 1024


@dataclass
class Attachment:
    plan: NetworkPlan
    listeners: list[tuple[socket.socket, int]] = field(default_factory=list)  # (socket, guest port)

    def close_listeners(self) -> None:
        for sock, _ in self.listeners:
            sock.close()
        self.listeners.clear()


def check(cfg: Config) -> None:
    """Preconditions of the mode, before anything changes.

    :raises PolicyDenied: nat without privilege or ip_forward.
    """
    if cfg.network.mode == "nat":
        from microagent.network import nat

        nat.check_preconditions()


def attach(cfg: Config, rt: RuntimeDir, workspace: str) -> Attachment:
    """Bind published ports and set up the network; all or nothing.

    :raises Conflict: a published host port is in use.
    :raises PolicyDenied: nat preconditions.
    """
    from microagent.channel.forward import bind_listener

    check(cfg)
    attachment = Attachment(NetworkPlan(mode=cfg.network.mode))
    try:
        for fwd in cfg.network.portForwards:
            attachment.listeners.append((bind_listener(fwd.host, fwd.hostPort), fwd.guestPort))
        if cfg.network.mode == "nat":
            from microagent.network import nat

            tap = tap_name(workspace)
            state_root = Path(cfg.stateDir)
            lease = nat.setup(state_root, workspace, tap)
            try:
                resolv = Path("/etc/resolv.conf").read_text()
            except OSError:
                resolv = ""
            attachment.plan = NetworkPlan(mode="nat", tap=tap, lease=lease, dns=host_nameservers(resolv))
    except BaseException:
        attachment.close_listeners()
        raise
    write_json_atomic(rt.path / "network.json", {
        **attachment.plan.describe(),
        "published": [{"host": f.host, "hostPort": f.hostPort, "guestPort": f.guestPort, "protocol": "tcp"}
                      for f in cfg.network.portForwards],
    })
    return attachment


def rebind_published(runtime: dict[str, Any]) -> list[tuple[socket.socket, int]]:
    """Listeners for the published ports recorded in ``runtime.json`` (for a new helper).

    A port someone else took meanwhile is skipped: the workspace keeps running.
    """
    from microagent.channel.forward import bind_listener
    from microagent.errors import Conflict

    out = []
    network = (runtime.get("config") or {}).get("network") or {}
    for fwd in network.get("portForwards") or ():
        try:
            out.append((bind_listener(str(fwd.get("host", "127.0.0.1")), int(fwd["hostPort"])),
                        int(fwd["guestPort"])))
        except (Conflict, KeyError, ValueError):
            continue
    return out


def write_config_disk(rt: RuntimeDir, hostname: str, network: dict[str, Any], env: tuple[str, ...] = ()) -> Path:
    """The per-boot config disk: one JSON object, NUL-padded (docs/protocol.md)."""
    doc = json.dumps({"hostname": hostname, "env": list(env), "network": network}).encode()
    if len(doc) >= CONFIG_DISK_BYTES:
        raise Permanent(f"the per-boot config ({len(doc)} bytes) does not fit the {CONFIG_DISK_BYTES // 1024} KiB "
                        "config disk", "pass fewer or shorter -e values")
    path = rt.path / "config.disk"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(doc + b"\0" * (CONFIG_DISK_BYTES - len(doc)))
    tmp.replace(path)
    return path


def detach(rt: RuntimeDir, workspace: str) -> list[str]:
    """Remove the TAP and firewall rules recorded in ``network.json``; returns what went."""
    recorded: dict[str, Any] | None = read_json(rt.path / "network.json")
    if not recorded or recorded.get("mode") != "nat":
        return []
    from microagent.network import nat

    return nat.teardown(workspace, str(recorded.get("tap") or tap_name(workspace)))


def release(state_root: Path, workspace: str) -> None:
    """Free the NAT lease (on delete)."""
    from microagent.network import nat

    if (state_root / "network" / "leases.json").exists():
        nat.release(state_root, workspace)
