"""NAT networking: /30 leases, a TAP per workspace, and firewall rules of our own.

Everything this module creates is named so it can be found and removed
without touching anything else: TAPs are ``mat<hash>`` (IPv6 disabled on
them), firewall state lives only in our own nftables table or iptables
chains (:mod:`.firewall`, default deny: the guest reaches public IPv4 and its
DNS servers only), and every rule carries the comment
``microagent:<workspace>:<tap>``.  Leases persist in
``<state>/network/leases.json`` (under a lock) and are freed on delete.

Preconditions are checked before any change and fail closed: CAP_NET_ADMIN,
``net.ipv4.ip_forward=1`` (never flipped by us), ``/dev/net/tun``, and
``nft`` or ``iptables``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from microagent.errors import NotFound, Permanent, PolicyDenied, ResourceExhausted
from microagent.fsutil import atomic_write
from microagent.network import firewall
from microagent.network.firewall import run_checked
from microagent.network.plan import NAT_POOL, NAT_PREFIX, NatLease

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
    return True, f"CAP_NET_ADMIN, ip_forward=1, /dev/net/tun; rules through {firewall.choose()}"


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
    firewall.choose()  # nft or iptables present (NotFound otherwise)


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
        atomic_write(path, json.dumps(table, indent=2, sort_keys=True).encode())


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
    run_checked(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], f"creating {tap}")
    try:
        _disable_ipv6(tap)
        run_checked(["ip", "addr", "add", f"{lease.host_address}/{NAT_PREFIX}", "dev", tap], f"addressing {tap}")
        run_checked(["ip", "link", "set", tap, "up"], f"bringing {tap} up")
    except Permanent:
        delete_tap(tap)
        raise


def _disable_ipv6(tap: str) -> None:
    """No IPv6 on our TAP (its own setting, not a host-wide one): the kernel then drops every
    IPv6 packet the guest sends before any firewall sees it, for nft and iptables alike."""
    knob = Path("/proc/sys/net/ipv6/conf") / tap / "disable_ipv6"
    if knob.parent.parent.is_dir():  # a kernel without IPv6 has nothing to disable
        knob.write_text("1")


def delete_tap(tap: str) -> bool:
    if not link_exists(tap):
        return False
    subprocess.run(["ip", "link", "delete", tap], capture_output=True)
    return True


def rule_owner(workspace: str, tap: str) -> str:
    """What the rules' ``microagent:<owner>`` comments name: the workspace, and its TAP to tell
    apart same-named workspaces of different state roots."""
    return f"{workspace}:{tap}"


def setup(state_root: Path, workspace: str, tap: str, *, dns: tuple[str, ...] = (),
          allow_host: bool = False) -> tuple[NatLease, str]:
    """Lease, TAP and rules, all or nothing; returns the lease and the firewall used.

    ``dns`` (the guest's nameservers) and ``allow_host`` shape the rules (:mod:`.firewall`).

    :raises PolicyDenied: missing privilege or ip_forward (nothing changed).
    """
    check_preconditions()
    kind = firewall.choose()
    lease = allocate(state_root, workspace)
    try:
        create_tap(tap, lease)
        firewall.add_rules(rule_owner(workspace, tap), tap, lease, kind, dns=dns, allow_host=allow_host)
    except BaseException:
        teardown(workspace, tap)
        raise
    return lease, kind


def teardown(workspace: str, tap: str) -> list[str]:
    """Remove the TAP and the rules (the lease stays until delete); returns what was removed."""
    removed = []
    if delete_tap(tap):
        removed.append(f"tap {tap}")
    if firewall.remove_rules(rule_owner(workspace, tap)):
        removed.append("firewall rules")
    return removed
