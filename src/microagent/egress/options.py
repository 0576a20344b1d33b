"""The egress options of ``run``/``create`` (CLI and SDK), checked before anything boots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from microagent.egress.policy import EgressPolicy
from microagent.errors import InvalidRequest


def policy_from_options(network: str, hosts: Sequence[str] = (), cidrs: Sequence[str] = (),
                        deny_all: bool = False) -> EgressPolicy | None:
    """The policy the options ask for, or ``None`` when no egress option was given.

    Any egress option turns the proxy on, and the proxy refuses what it does not name
    (``deny_all`` alone: a proxy that refuses everything, and audits it).

    :raises InvalidRequest: a malformed host or CIDR, or a network mode with a NIC.
    """
    if not hosts and not cidrs and not deny_all:
        return None
    if deny_all and (hosts or cidrs):
        raise InvalidRequest("--egress-deny-all cannot be combined with --egress-allow or --egress-allow-cidr",
                             "an allowlist denies everything it does not name already")
    if network != "isolated":
        raise InvalidRequest(f"egress options cannot be used with --network {network}",
                             "use --network isolated (the default): with a NIC the guest could go around "
                             "the proxy, and there is no transparent egress mode yet")
    return EgressPolicy.parse(hosts, cidrs)


def to_config(policy_wire: dict[str, Any] | None) -> Any:
    """A manifest's ``network.egress`` as the supervisor's :class:`~microagent.vmkit.types.Egress`."""
    if policy_wire is None:
        return None
    from microagent.vmkit.types import Egress

    return Egress(allowHosts=tuple(policy_wire.get("allowHosts") or ()),
                  allowCidrs=tuple(policy_wire.get("allowCidrs") or ()))
