"""What a boot with an egress policy needs: the helper's ``egress.json`` and the guest's side.

The supervisor calls :func:`prepare` while it writes the per-boot config:
the policy goes to ``egress.json`` in the runtime directory (0600, what the
helper's proxy reads and ``egress set`` rewrites), and the guest gets the
proxy port to listen on and the proxy variables for every process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microagent.fsutil import atomic_write

if TYPE_CHECKING:  # a boot without egress (the helper's arguments) loads no policy code
    from microagent.egress.policy import EgressPolicy

POLICY_NAME = "egress.json"


def write_policy(runtime_dir: Path, policy: EgressPolicy) -> None:
    atomic_write(runtime_dir / POLICY_NAME, json.dumps(policy.to_wire()).encode())


def prepare(runtime_dir: Path, egress: Any, env: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Write ``egress.json`` for ``egress`` (a :class:`~microagent.vmkit.types.Egress`).

    :returns: the guest's env with the proxy variables added, and the config disk's ``proxy`` object.
    :raises InvalidRequest: a malformed host or CIDR.
    """
    from microagent.egress.policy import EgressPolicy, proxy_env
    from microagent.egress.secrets import SecretBinding

    allowed = EgressPolicy.parse(egress.allowHosts, egress.allowCidrs)
    bindings = tuple(SecretBinding.from_wire({"name": s.name, "placeholder": s.placeholder, "hosts": s.hosts})
                     for s in egress.secrets)
    write_policy(runtime_dir, EgressPolicy(allowed.allow_hosts, allowed.allow_cidrs, bindings))
    # the guest sees only the placeholders; the helper gets the values (egress/vault.py)
    placeholders = tuple(f"{b.name}={b.placeholder}" for b in bindings)
    return (*env, *proxy_env(egress.proxyPort), *placeholders), {"port": egress.proxyPort}


def helper_args(runtime_dir: Path, config: dict[str, Any]) -> tuple[str, list[str]]:
    """The helper's module and extra arguments for a workspace's recorded ``config``."""
    egress = (config.get("network") or {}).get("egress")
    if egress is None:
        return "microagent.channel.router", []
    return "microagent.egress.helper", ["--egress-policy", str(runtime_dir / POLICY_NAME),
                                        "--egress-workspace", runtime_dir.name,
                                        "--egress-port", str(int(egress.get("proxyPort") or 3128))]
