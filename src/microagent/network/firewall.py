"""NAT's firewall rules: masquerade + forward, in nftables or in iptables chains of our own.

Two implementations of one job; every rule carries the comment
``microagent:<owner>`` (``<workspace>:<tap>``, see :func:`microagent.network.nat.rule_owner`)
and lives only in state microagent created:

- ``nft``: the table ``inet microagent`` (chains ``postrouting``, ``forward``);
  dropped when its last rule goes.
- ``iptables``: the chains ``MICROAGENT-POSTROUTING`` (table ``nat``) and
  ``MICROAGENT-FORWARD`` (table ``filter``), each entered by one jump rule
  inserted first in ``POSTROUTING``/``FORWARD``; chains and jumps go when
  the last rule goes.

Which one (``MICROAGENT_NAT_FIREWALL=auto|nft|iptables``, default ``auto``):
``auto`` takes iptables when the iptables ``FORWARD`` chain's policy is DROP
(Docker does that): a packet must pass every base chain, so an accept in our
own nft table cannot override that drop, while a rule first in ``FORWARD``
does.  Otherwise nft, or iptables when nft is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess

from microagent.errors import NotFound, Permanent, PolicyDenied
from microagent.network.plan import NatLease

ENV_VAR = "MICROAGENT_NAT_FIREWALL"
TABLE = "microagent"
CHAINS = {"nat": ("POSTROUTING", "MICROAGENT-POSTROUTING"), "filter": ("FORWARD", "MICROAGENT-FORWARD")}
JUMP_COMMENT = "microagent"


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


def add_rules(owner: str, tap: str, lease: NatLease, kind: str) -> None:
    """Masquerade and forward rules for one workspace's TAP, with ``kind``'s tool."""
    if kind == "iptables":
        _iptables_add(owner, tap, lease)
    else:
        _nft_add(owner, tap, lease)


def remove_rules(owner: str) -> int:
    """Delete ``owner``'s rules wherever they are (both tools); returns how many went."""
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
        for table, (_, chain) in CHAINS.items():
            out = subprocess.run([iptables, "-w", "-t", table, "-S", chain], capture_output=True, text=True).stdout
            owners |= set(_comments(out))
    return owners


def _comments(text: str) -> list[str]:
    """Owners in ``microagent:<owner>`` comments (nft quotes them, iptables may not)."""
    return re.findall(r'microagent:([^"\s]+)', text)


# --- nftables --------------------------------------------------------------------


def _nft_add(owner: str, tap: str, lease: NatLease) -> None:
    note = comment(owner)
    script = f"""
table inet {TABLE} {{
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
  chain forward {{ type filter hook forward priority filter; policy accept; }}
}}
add rule inet {TABLE} postrouting ip saddr {lease.subnet} oifname != "{tap}" masquerade comment "{note}"
add rule inet {TABLE} forward iifname "{tap}" accept comment "{note}"
add rule inet {TABLE} forward oifname "{tap}" ct state established,related accept comment "{note}"
"""
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


def _iptables_add(owner: str, tap: str, lease: NatLease) -> None:
    for table, (builtin, chain) in CHAINS.items():
        if _iptables("-t", table, "-S", chain).returncode != 0:
            _iptables("-t", table, "-N", chain)
        jump = ["-j", chain, "-m", "comment", "--comment", JUMP_COMMENT]
        if _iptables("-t", table, "-C", builtin, *jump).returncode != 0:
            proc = _iptables("-t", table, "-I", builtin, "1", *jump)
            if proc.returncode != 0:
                raise Permanent(f"adding the jump to {chain} failed: {proc.stderr.strip()}")
    note = ["-m", "comment", "--comment", comment(owner)]
    rules = [("nat", ["-s", lease.subnet, "!", "-o", tap, "-j", "MASQUERADE"]),
             ("filter", ["-i", tap, "-j", "ACCEPT"]),
             ("filter", ["-o", tap, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"])]
    for table, rule in rules:
        proc = _iptables("-t", table, "-A", CHAINS[table][1], *rule, *note)
        if proc.returncode != 0:
            raise Permanent(f"adding an iptables rule failed: {proc.stderr.strip()}")


def _iptables_remove(owner: str) -> int:
    """Delete ``owner``'s rules; drop a chain (and its jump) when it is empty."""
    if _tool("iptables") is None:
        return 0
    removed = 0
    for table, (builtin, chain) in CHAINS.items():
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
