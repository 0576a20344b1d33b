"""NAT networking: /30 leases, a TAP per workspace, and our own nftables table.

Everything this module creates is named so it can be found and removed
without touching anything else: TAPs are ``mat<hash>``, firewall state lives
only in the ``inet microagent`` table, and every rule carries the comment
``microagent:<workspace>``.  Leases persist in ``<state>/network/leases.json``
(under a lock) and are freed on delete.

Preconditions are checked before any change and fail closed: CAP_NET_ADMIN,
``net.ipv4.ip_forward=1`` (never flipped by us), ``/dev/net/tun``, ``nft``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from microagent.errors import NotFound, Permanent, PolicyDenied, ResourceExhausted
from microagent.network.plan import NAT_POOL, NAT_PREFIX, NatLease

TABLE = "microagent"
CAP_NET_ADMIN = 12


def has_cap_net_admin(status: str | None = None) -> bool:
    text = status if status is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
    return False


def ip_forward_enabled() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return False


def readiness() -> tuple[bool, str]:
    """Whether nat can work here, and if not, what to do (for doctor)."""
    try:
        check_preconditions()
    except (PolicyDenied, NotFound) as exc:
        return False, f"{exc.message}; {exc.remediation}"
    return True, "CAP_NET_ADMIN, ip_forward=1, /dev/net/tun and nft present"


def check_preconditions() -> None:
    """:raises PolicyDenied: missing privilege or ip_forward. :raises NotFound: missing tools."""
    if not has_cap_net_admin():
        raise PolicyDenied("network mode nat needs CAP_NET_ADMIN",
                           "run as root (or grant cap_net_admin), or use --network user")
    if not ip_forward_enabled():
        raise PolicyDenied("network mode nat needs net.ipv4.ip_forward=1, and microagent never changes "
                           "sysctls by itself", "run 'sysctl -w net.ipv4.ip_forward=1' or use --network user")
    if not Path("/dev/net/tun").exists():
        raise NotFound("/dev/net/tun is missing", "modprobe tun")
    if not shutil.which("nft") and not shutil.which("nft", path="/usr/sbin:/sbin"):
        raise NotFound("nft is not installed", "apt-get install nftables, or use --network user")


def _run(argv: list[str], what: str, *, input: str | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if proc.returncode != 0:
        raise Permanent(f"{what} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _nft() -> str:
    return shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin") or "nft"


# --- leases -------------------------------------------------------------------


@contextmanager
def _leases(state_root: Path) -> Iterator[dict[str, str]]:
    """The lease table (workspace → subnet), locked and written back atomically."""
    directory = state_root / "network"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "leases.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / "leases.json"
        try:
            table: dict[str, str] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            table = {}
        yield table
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=2, sort_keys=True))
        os.replace(tmp, path)


def _subnets_in_use_on_host() -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Subnets of addresses configured on this host, so a lease never collides."""
    proc = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True)
    used = set()
    try:
        for link in json.loads(proc.stdout or "[]"):
            for addr in link.get("addr_info", []):
                used.add(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    except (ValueError, KeyError):
        pass
    return used


def allocate(state_root: Path, workspace: str) -> NatLease:
    """The workspace's /30, reusing its existing lease.

    :raises ResourceExhausted: when the pool is exhausted.
    """
    with _leases(state_root) as table:
        if workspace in table:
            return NatLease(table[workspace])
        taken = {ipaddress.ip_network(s) for s in table.values()}
        on_host = _subnets_in_use_on_host()
        for candidate in NAT_POOL.subnets(new_prefix=NAT_PREFIX):
            if candidate in taken or any(candidate.overlaps(n) for n in on_host):
                continue
            table[workspace] = str(candidate)
            return NatLease(str(candidate))
    raise ResourceExhausted(f"no free /{NAT_PREFIX} left in {NAT_POOL}", "delete unused workspaces")


def release(state_root: Path, workspace: str) -> None:
    with _leases(state_root) as table:
        table.pop(workspace, None)


# --- TAP and firewall -----------------------------------------------------------


def link_exists(name: str) -> bool:
    # asked through netlink, not /sys/class/net: sysfs shows the network namespace
    # that mounted it, which is not ours under `nsenter --net`
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def create_tap(tap: str, lease: NatLease) -> None:
    """A TAP with the host end of the /30; replaces a stale one of the same name."""
    if link_exists(tap):
        delete_tap(tap)
    _run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], f"creating {tap}")
    try:
        _run(["ip", "addr", "add", f"{lease.host_address}/{NAT_PREFIX}", "dev", tap], f"addressing {tap}")
        _run(["ip", "link", "set", tap, "up"], f"bringing {tap} up")
    except Permanent:
        delete_tap(tap)
        raise


def delete_tap(tap: str) -> bool:
    if not link_exists(tap):
        return False
    subprocess.run(["ip", "link", "delete", tap], capture_output=True)
    return True


def add_rules(workspace: str, tap: str, lease: NatLease) -> None:
    """Masquerade and forward rules for one workspace in the ``inet microagent`` table."""
    comment = f"microagent:{workspace}"
    script = f"""
table inet {TABLE} {{
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
  chain forward {{ type filter hook forward priority filter; policy accept; }}
}}
add rule inet {TABLE} postrouting ip saddr {lease.subnet} oifname != "{tap}" masquerade comment "{comment}"
add rule inet {TABLE} forward iifname "{tap}" accept comment "{comment}"
add rule inet {TABLE} forward oifname "{tap}" ct state established,related accept comment "{comment}"
"""
    _run([_nft(), "-f", "-"], "adding nftables rules", input=script)


def remove_rules(workspace: str) -> int:
    """Delete this workspace's rules (by handle); drop the table when it is empty."""
    proc = subprocess.run([_nft(), "-j", "-a", "list", "table", "inet", TABLE], capture_output=True, text=True)
    if proc.returncode != 0:
        return 0  # no table: nothing of ours exists
    comment = f"microagent:{workspace}"
    removed, remaining = 0, 0
    for item in json.loads(proc.stdout).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        if rule.get("comment") == comment:
            subprocess.run([_nft(), "delete", "rule", "inet", TABLE, rule["chain"], "handle",
                            str(rule["handle"])], capture_output=True)
            removed += 1
        else:
            remaining += 1
    if remaining == 0:
        subprocess.run([_nft(), "delete", "table", "inet", TABLE], capture_output=True)
    return removed


def setup(state_root: Path, workspace: str, tap: str) -> NatLease:
    """Lease, TAP and rules, all or nothing.

    :raises PolicyDenied: missing privilege or ip_forward (nothing changed).
    """
    check_preconditions()
    lease = allocate(state_root, workspace)
    try:
        create_tap(tap, lease)
        add_rules(workspace, tap, lease)
    except BaseException:
        teardown(workspace, tap)
        raise
    return lease


def teardown(workspace: str, tap: str) -> list[str]:
    """Remove the TAP and the rules (the lease stays until delete); returns what was removed."""
    removed = []
    if delete_tap(tap):
        removed.append(f"tap {tap}")
    if remove_rules(workspace):
        removed.append("nftables rules")
    return removed
