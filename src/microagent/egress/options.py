"""The egress options of ``run``/``create`` (CLI and SDK), checked before anything boots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from microagent.errors import InvalidRequest

if TYPE_CHECKING:  # a run without egress options imports no policy code
    from microagent.egress.policy import EgressPolicy


def policy_from_options(network: str, hosts: Sequence[str] = (), cidrs: Sequence[str] = (),
                        deny_all: bool = False, secrets: Sequence[str] = (),
                        secret_hosts: Sequence[str] = ()) -> EgressPolicy | None:
    """The policy the options ask for, or ``None`` when no egress option was given.

    Any egress option turns the proxy on, and the proxy refuses what it does not name
    (``deny_all`` alone: a proxy that refuses everything, and audits it).  ``secrets`` and
    ``secret_hosts`` are ``--secret``/``--secret-host`` entries
    (:func:`microagent.egress.secrets.parse_options`); their values are read at start.

    :raises InvalidRequest: a malformed host, CIDR or secret, a secret source that cannot be
        read, or a network mode with a NIC.
    """
    if not hosts and not cidrs and not deny_all and not secrets and not secret_hosts:
        return None
    if deny_all and (hosts or cidrs):
        raise InvalidRequest("--egress-deny-all cannot be combined with --egress-allow or --egress-allow-cidr",
                             "an allowlist denies everything it does not name already")
    if network != "isolated":
        raise InvalidRequest(f"egress options and secrets cannot be used with --network {network}",
                             "use --network isolated (the default): with a NIC the guest could go around "
                             "the proxy, and there is no transparent egress mode yet")
    from microagent.egress.policy import EgressPolicy
    from microagent.egress.secrets import parse_options, read_values

    bindings = parse_options(secrets, secret_hosts)
    read_values(bindings)  # each source must be readable now; the values are read again at start
    policy = EgressPolicy.parse(hosts, cidrs)
    return EgressPolicy(policy.allow_hosts, policy.allow_cidrs, bindings)


def to_config(policy_wire: dict[str, Any] | None) -> Any:
    """A manifest's ``network.egress`` as the supervisor's :class:`~microagent.vmkit.types.Egress`."""
    if policy_wire is None:
        return None
    from microagent.vmkit.types import Egress, EgressSecret

    # the supervisor gets names, placeholders and hosts: never a value, nor even its source
    return Egress(allowHosts=tuple(policy_wire.get("allowHosts") or ()),
                  allowCidrs=tuple(policy_wire.get("allowCidrs") or ()),
                  secrets=tuple(EgressSecret(name=s["name"], placeholder=s["placeholder"], hosts=tuple(s["hosts"]))
                                for s in policy_wire.get("secrets") or ()))
