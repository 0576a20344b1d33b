"""Which node gets a new workspace: a pure function of what the host agents offer.

Each host agent answers :meth:`~microagent.cluster.agent.HostAgent.offer` with
an :class:`Offer` (its capabilities and what it has room for); the caller
passes the live offers here and tries the nodes in the order returned.  No
Ray in this module, so the rules are unit-tested on their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from microagent.errors import InvalidRequest, ResourceExhausted, Unsupported

STRATEGIES = ("spread", "pack")
#: the capabilities ``require`` may name, and what each means
CAPABILITY_KEYS = {
    "kvm": "1 when the node boots guests with KVM, 0 under TCG emulation",
    "memory_mib": "MiB of memory the node has (its guests share it)",
    "cpus": "CPUs of the node",
    "backend": "the backend its workspaces use (qemu, firecracker, ...)",
    "arch": "the host architecture (x86_64, aarch64)",
}


@dataclass(frozen=True)
class Offer:
    """What one node's host agent can take right now.

    :param capabilities: ``{kvm, backend, arch, cpus, memory_mib, ...}`` as advertised.
    :param free_mib: guest memory still unclaimed (budget less live workspaces, capped
        by the memory the kernel says is available).
    :param workspaces: how many workspaces the agent owns.
    :param max_workspaces: the most it takes (``None``: memory is the only limit).
    """

    node_id: str
    hostname: str
    capabilities: Mapping[str, Any] = field(default_factory=dict)
    free_mib: int = 0
    workspaces: int = 0
    max_workspaces: int | None = None

    def fits(self, memory_mib: int) -> bool:
        if self.max_workspaces is not None and self.workspaces >= self.max_workspaces:
            return False
        return self.free_mib >= memory_mib

    def to_json(self) -> dict[str, Any]:
        return {"nodeId": self.node_id, "hostname": self.hostname, "capabilities": dict(self.capabilities),
                "freeMiB": self.free_mib, "workspaces": self.workspaces, "maxWorkspaces": self.max_workspaces}


def check_require(require: Mapping[str, Any] | None) -> dict[str, Any]:
    """:raises InvalidRequest: for an unknown capability or a value of the wrong type."""
    out: dict[str, Any] = {}
    for key, want in (require or {}).items():
        if key not in CAPABILITY_KEYS:
            raise InvalidRequest(f"require names unknown capability {key!r}",
                                 f"use one of: {', '.join(CAPABILITY_KEYS)}")
        numeric = key in ("kvm", "memory_mib", "cpus")
        if numeric and (isinstance(want, bool) or not isinstance(want, int) or want < 0):
            raise InvalidRequest(f"require {key}={want!r} is not a non-negative integer",
                                 f"pass e.g. require={{{key!r}: 1}}")
        if not numeric and not isinstance(want, str):
            raise InvalidRequest(f"require {key}={want!r} is not a string", f"pass e.g. require={{{key!r}: 'qemu'}}")
        out[key] = want
    return out


def satisfies(capabilities: Mapping[str, Any], require: Mapping[str, Any]) -> bool:
    """Numbers are minimums (``kvm: 1`` wants KVM, ``kvm: 0`` takes any), strings must be equal."""
    for key, want in require.items():
        have = capabilities.get(key)
        if isinstance(want, int):
            if not isinstance(have, int) or have < want:
                return False
        elif have != want:
            return False
    return True


def choose(offers: Sequence[Offer], *, memory_mib: int, require: Mapping[str, Any] | None = None,
           strategy: str = "spread") -> list[Offer]:
    """The nodes to try for a workspace of ``memory_mib``, best first.

    ``spread`` prefers the node with the fewest workspaces, then the most free
    memory; ``pack`` the most workspaces, then the least free memory that still
    fits. Ties go by node ID, so the order is deterministic.

    :raises InvalidRequest: for a bad ``require`` or ``strategy``.
    :raises Unsupported: when no node has the required capabilities (or there is no node).
    :raises ResourceExhausted: when the nodes that have them are all full.
    """
    if strategy not in STRATEGIES:
        raise InvalidRequest(f"unknown placement strategy {strategy!r}", f"use one of: {', '.join(STRATEGIES)}")
    require = check_require(require)
    if not offers:
        raise Unsupported("the cluster has no live microagent host agent",
                          "start Ray on a host with --resources '{\"microagent_host\": 1}' (docs/cluster.md)")
    able = [o for o in offers if satisfies(o.capabilities, require)]
    if not able:
        wanted = ", ".join(f"{k}={v}" for k, v in require.items())
        raise Unsupported(f"no node of the cluster offers {wanted}",
                          "drop or relax require=, or add a node that has it (docs/cluster.md)",
                          nodes=[o.hostname for o in offers])
    fitting = [o for o in able if o.fits(memory_mib)]
    if not fitting:
        room = ", ".join(f"{o.hostname} ({o.node_id[:8]}): {o.free_mib} MiB free, {o.workspaces}"
                         + (f"/{o.max_workspaces}" if o.max_workspaces is not None else "") + " workspaces"
                         for o in able)
        raise ResourceExhausted(f"no node has room for a workspace of {memory_mib} MiB: {room}",
                                "delete or halt workspaces, use a smaller profile, or add a node")
    if strategy == "spread":
        return sorted(fitting, key=lambda o: (o.workspaces, -o.free_mib, o.node_id))
    return sorted(fitting, key=lambda o: (-o.workspaces, o.free_mib, o.node_id))
