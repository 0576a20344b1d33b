"""The egress options ``run`` and ``create`` share (docs/egress.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def egress_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--egress-allow``, ``--egress-allow-cidr``, ``--egress-deny-all``, ``--secret``
    and ``--secret-host``."""
    f = click.option("--secret-host", "secret_host", multiple=True, metavar="NAME=HOST",
                     help="the host (or .SUFFIX) secret NAME's value may be sent to (repeatable)")(f)
    f = click.option("--secret", "secret", multiple=True, metavar="NAME[=@env:VAR|=@file:PATH]",
                     help="the guest gets $NAME as a placeholder; the egress proxy puts the value (host "
                          "env var NAME, or VAR, or the file) into request headers toward its --secret-host")(f)
    f = click.option("--egress-deny-all", is_flag=True,
                     help="start the egress proxy with an empty allowlist (everything refused and audited)")(f)
    f = click.option("--egress-allow-cidr", "egress_allow_cidr", multiple=True, metavar="CIDR",
                     help="let the egress proxy dial addresses in this private range (off by default)")(f)
    f = click.option("--egress-allow", "egress_allow", multiple=True, metavar="HOST[:PORT]",
                     help="let the guest reach HOST (or every subdomain of .SUFFIX) through the egress "
                          "proxy on its 127.0.0.1:3128, on any port or only on PORT; only with "
                          "--network isolated")(f)
    return f


def egress_policy(network: str, allow: tuple[str, ...], cidrs: tuple[str, ...], deny_all: bool,
                  secrets: tuple[str, ...] = (), secret_hosts: tuple[str, ...] = ()) -> Any:
    """The checked policy, or ``None``; raises ``InvalidRequest`` (a usage error) for bad input."""
    from microagent.egress.options import policy_from_options

    return policy_from_options(network, allow, cidrs, deny_all, secrets, secret_hosts)
