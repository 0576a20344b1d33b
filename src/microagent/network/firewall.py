"""NAT's firewall rules: masquerade, default-deny forward and input, in nftables or in
iptables chains of our own.

Two implementations of one job; every rule carries the comment
``microagent:<owner>`` (``<workspace>:<tap>``, see :func:`microagent.network.nat.rule_owner`)
and lives only in state microagent created:

- ``nft``: the table ``inet microagent`` (chains ``postrouting``, ``forward``,
  ``input``); dropped when its last rule goes.
- ``iptables``: the chains ``MICROAGENT-POSTROUTING`` (table ``nat``),
  ``MICROAGENT-FORWARD`` and ``MICROAGENT-INPUT`` (table ``filter``), each
  entered by one jump rule inserted first in its built-in chain; chains and
  jumps go when the last rule goes.

What a workspace's TAP may do (:mod:`.egress`): forward to the guest's DNS
servers on port 53, never to a denied range (private, CGNAT, link-local,
loopback, multicast: the LAN, cloud metadata, other leases), anything else
masqueraded; to the host itself only replies and DNS, plus everything to the
TAP's own address when the workspace allows host access.  Nothing new enters
the TAP from outside.

Every change runs under one host-wide lock (:func:`host_lock`): removing the
last rule drops the table, and another workspace's add must not land in
between.  Two state roots share one firewall, so the lock is not the state's.

Which one (``MICROAGENT_NAT_FIREWALL=auto|nft|iptables``, default ``auto``):
``auto`` takes iptables when the iptables ``FORWARD`` chain's policy is DROP
(Docker does that): a packet must pass every base chain, so an accept in our
own nft table cannot override that drop, while a rule first in ``FORWARD``
does.  Otherwise nft, or iptables when nft is not installed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from microagent.errors import NotFound, Permanent, PolicyDenied, Transient
from microagent.network.egress import DENIED_IPV4
from microagent.network.plan import NatLease
from microagent.waiting import wait_until

ENV_VAR = "MICROAGENT_NAT_FIREWALL"
TABLE = "microagent"
#: (table, built-in chain, our chain)
CHAINS = (("nat", "POSTROUTING", "MICROAGENT-POSTROUTING"), ("filter", "FORWARD", "MICROAGENT-FORWARD"),
          ("filter", "INPUT", "MICROAGENT-INPUT"))
JUMP_COMMENT = "microagent"
#: host-wide: every state root's workspaces change the same firewall
LOCK_PATH = Path("/run/microagent/firewall.lock")
LOCK_TIMEOUT_S = 30.0


@contextmanager
def host_lock(path: Path = LOCK_PATH, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the host-wide firewall lock (a flock on a root-owned 0600 file in a 0700 directory).

    :raises PolicyDenied: the lock file cannot be opened (not root).
    :raises Transient: another change held it for ``timeout`` seconds.
    """
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PolicyDenied(f"cannot open the firewall lock {path}: {exc.strerror}",
                           "run as root, or use --network user") from exc
    try:
        busy = Transient(f"another change held the firewall lock {path} for {timeout:.0f}s",
                         f"retry; 'fuser {path}' names the process holding it")

        def locked() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise busy from exc
                return False
            return True

        if not wait_until(locked, timeout, 0.05):
            raise busy
        yield
    finally:
        os.close(fd)


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def run_checked(argv: list[str], what: str, *, input: str | None = None) -> str:
    """Run a network tool; :raises Permanent: naming ``what`` with the tool's message."""
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if proc.returncode != 0:
        raise Permanent(f"{what} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def comment(owner: str) -> str:
    return f"microagent:{owner}"


def forward_policy_drops() -> bool:
    """Whether the iptables ``FORWARD`` chain drops by policy (a Docker host, typically)."""
    iptables = _tool("iptables")
    if iptables is None:
        return False
    proc = subprocess.run([iptables, "-w", "-S", "FORWARD"], capture_output=True, text=True)
    return proc.returncode == 0 and "-P FORWARD DROP" in proc.stdout.splitlines()


def choose() -> str:
    """``nft`` or ``iptables`` (see the module docstring).

    :raises NotFound: the asked-for tool, or both, are missing.
    :raises PolicyDenied: an unknown ``MICROAGENT_NAT_FIREWALL``.
    """
    wanted = os.environ.get(ENV_VAR, "") or "auto"
    if wanted not in ("auto", "nft", "iptables"):
        raise PolicyDenied(f"{ENV_VAR}={wanted!r} is not a firewall", "set it to auto, nft or iptables")
    if wanted != "auto":
        if _tool(wanted) is None:
            raise NotFound(f"{ENV_VAR}={wanted} but {wanted} is not installed",
                           f"apt-get install {'nftables' if wanted == 'nft' else 'iptables'}")
        return wanted
    if _tool("iptables") is not None and (_tool("nft") is None or forward_policy_drops()):
        return "iptables"
    if _tool("nft") is not None:
        return "nft"
    raise NotFound("nat needs nft or iptables, and neither is installed", "apt-get install nftables")


def add_rules(owner: str, tap: str, lease: NatLease, kind: str, *, dns: Sequence[str] = (),
              allow_host: bool = False) -> None:
    """One workspace's rules with ``kind``'s tool (see the module docstring).

    ``dns``: the IPv4 nameservers the guest is given (let through on port 53
    even in a denied range); ``allow_host``: the guest may reach the host at
    the TAP's address.
    """
    with host_lock():
        if kind == "iptables":
            _iptables_add(owner, tap, lease, dns, allow_host)
        else:
            _nft_add(owner, tap, lease, dns, allow_host)


def remove_rules(owner: str) -> int:
    """Delete ``owner``'s rules wherever they are (both tools); returns how many went."""
    with host_lock():
        return _nft_remove(owner) + _iptables_remove(owner)


def rule_owners() -> set[str]:
    """The owners that have rules of ours (for ``gc``'s report)."""
    owners = set()
    nft = _tool("nft")
    if nft:
        out = subprocess.run([nft, "list", "table", "inet", TABLE], capture_output=True, text=True).stdout
        owners |= set(_comments(out))
    iptables = _tool("iptables")
    if iptables:
        for table, _, chain in CHAINS:
            out = subprocess.run([iptables, "-w", "-t", table, "-S", chain], capture_output=True, text=True).stdout
            owners |= set(_comments(out))
    return owners


def _comments(text: str) -> list[str]:
    """Owners in ``microagent:<owner>`` comments (nft quotes them, iptables may not)."""
    return re.findall(r'microagent:([^"\s]+)', text)


# --- nftables --------------------------------------------------------------------


def _nft_add(owner: str, tap: str, lease: NatLease, dns: Sequence[str], allow_host: bool) -> None:
    note = f'comment "{comment(owner)}"'
    tap_in, tap_out = f'iifname "{tap}"', f'oifname "{tap}"'
    denied = ", ".join(DENIED_IPV4)
    forward = [f"{tap_in} ip daddr {{ {denied} }} drop", f"{tap_in} meta nfproto ipv4 accept", f"{tap_in} drop",
               f"{tap_out} ct state established,related accept", f"{tap_out} drop"]
    to_host = [f"{tap_in} ct state established,related accept"]
    if dns:
        servers = ", ".join(dns)
        allow_dns = [f"{tap_in} ip daddr {{ {servers} }} {proto} dport 53 accept" for proto in ("udp", "tcp")]
        forward, to_host = allow_dns + forward, to_host + allow_dns
    if allow_host:
        to_host.append(f"{tap_in} ip daddr {lease.host_address} accept")
    to_host.append(f"{tap_in} drop")
    rules = [f"postrouting ip saddr {lease.subnet} oifname != \"{tap}\" masquerade"]
    rules += [f"forward {r}" for r in forward] + [f"input {r}" for r in to_host]
    script = f"""
table inet {TABLE} {{
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
  chain forward {{ type filter hook forward priority filter; policy accept; }}
  chain input {{ type filter hook input priority filter; policy accept; }}
}}
""" + "".join(f"add rule inet {TABLE} {rule} {note}\n" for rule in rules)
    run_checked([_tool("nft") or "nft", "-f", "-"], "adding nftables rules", input=script)


def _nft_remove(owner: str) -> int:
    """Delete ``owner``'s rules (by handle); drop the table when it is empty."""
    nft = _tool("nft")
    if nft is None:
        return 0
    proc = subprocess.run([nft, "-j", "-a", "list", "table", "inet", TABLE], capture_output=True, text=True)
    if proc.returncode != 0:
        return 0  # no table: nothing of ours exists
    note = comment(owner)
    removed, remaining = 0, 0
    for item in json.loads(proc.stdout).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        if rule.get("comment") == note:
            subprocess.run([nft, "delete", "rule", "inet", TABLE, rule["chain"], "handle",
                            str(rule["handle"])], capture_output=True)
            removed += 1
        else:
            remaining += 1
    if remaining == 0:
        subprocess.run([nft, "delete", "table", "inet", TABLE], capture_output=True)
    return removed


# --- iptables ----------------------------------------------------------------------


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("iptables") or "iptables", "-w", *args], capture_output=True, text=True)


def _iptables_add(owner: str, tap: str, lease: NatLease, dns: Sequence[str], allow_host: bool) -> None:
    for table, builtin, chain in CHAINS:
        if _iptables("-t", table, "-S", chain).returncode != 0:
            _iptables("-t", table, "-N", chain)
        jump = ["-j", chain, "-m", "comment", "--comment", JUMP_COMMENT]
        if _iptables("-t", table, "-C", builtin, *jump).returncode != 0:
            proc = _iptables("-t", table, "-I", builtin, "1", *jump)
            if proc.returncode != 0:
                raise Permanent(f"adding the jump to {chain} failed: {proc.stderr.strip()}")
    established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    allow_dns = [["-i", tap, "-d", server, "-p", proto, "--dport", "53", "-j", "ACCEPT"]
                 for server in dns for proto in ("udp", "tcp")]
    forward = [*allow_dns, *(["-i", tap, "-d", net, "-j", "DROP"] for net in DENIED_IPV4),
               ["-i", tap, "-j", "ACCEPT"], ["-o", tap, *established], ["-o", tap, "-j", "DROP"]]
    to_host = [["-i", tap, *established], *allow_dns]
    if allow_host:
        to_host.append(["-i", tap, "-d", lease.host_address, "-j", "ACCEPT"])
    to_host.append(["-i", tap, "-j", "DROP"])
    rules = [("nat", "MICROAGENT-POSTROUTING", ["-s", lease.subnet, "!", "-o", tap, "-j", "MASQUERADE"]),
             *(("filter", "MICROAGENT-FORWARD", r) for r in forward),
             *(("filter", "MICROAGENT-INPUT", r) for r in to_host)]
    note = ["-m", "comment", "--comment", comment(owner)]
    for table, chain, rule in rules:
        proc = _iptables("-t", table, "-A", chain, *rule, *note)
        if proc.returncode != 0:
            raise Permanent(f"adding an iptables rule failed: {proc.stderr.strip()}")


def _iptables_remove(owner: str) -> int:
    """Delete ``owner``'s rules; drop a chain (and its jump) when it is empty."""
    if _tool("iptables") is None:
        return 0
    removed = 0
    for table, builtin, chain in CHAINS:
        listing = _iptables("-t", table, "-S", chain)
        if listing.returncode != 0:
            continue  # no chain: nothing of ours in this table
        remaining = 0
        for line in listing.stdout.splitlines():
            words = shlex.split(line)
            if not words or words[0] != "-A":
                continue
            if comment(owner) in words:
                _iptables("-t", table, "-D", *words[1:])
                removed += 1
            else:
                remaining += 1
        if remaining == 0:
            _iptables("-t", table, "-D", builtin, "-j", chain, "-m", "comment", "--comment", JUMP_COMMENT)
            _iptables("-t", table, "-X", chain)
    return removed
