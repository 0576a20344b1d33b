"""What a guest may reach through the egress proxy (pure: no I/O).

A policy is a list of host names (exact, or ``.suffix`` for every subdomain),
each on any port or on one (``host:port``), and of CIDRs that open private
address ranges.  A name and port are allowed by the list; the address the
name resolves to must then be public (the ranges
``network/egress.py`` refuses for ``user``/``nat``, plus IPv6's loopback,
ULA, link-local, multicast and NAT64) unless a CIDR of the policy holds it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from microagent.errors import InvalidRequest
from microagent.network.egress import DENIED_IPV4

if TYPE_CHECKING:
    from microagent.egress.secrets import SecretBinding

#: the guest-side port of the proxy, on the guest's loopback
PROXY_PORT = 3128

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DENIED_IPV6 = ("::/128", "::1/128", "64:ff9b::/96", "64:ff9b:1::/48", "fc00::/7", "fe80::/10", "ff00::/8")
_DENIED: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (*DENIED_IPV4, *DENIED_IPV6))
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def proxy_env(port: int = PROXY_PORT) -> tuple[str, ...]:
    """The environment every guest process gets so that it uses the proxy."""
    url = f"http://127.0.0.1:{port}"
    return (f"HTTP_PROXY={url}", f"HTTPS_PROXY={url}", f"http_proxy={url}", f"https_proxy={url}",
            "NO_PROXY=localhost,127.0.0.1", "no_proxy=localhost,127.0.0.1")


def normalize_host(host: str) -> str:
    """``host`` lower-cased, without a trailing dot; IP literals in canonical form.

    :raises InvalidRequest: not a DNS name or an IP literal.
    """
    text = host.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if 0 < len(text) <= 253 and all(_LABEL.fullmatch(label) for label in text.split(".")):
        return text
    raise InvalidRequest(f"{host!r} is not a host name", "give a DNS name (api.example.com), "
                         "a .suffix for its subdomains (.example.com) or an IP address")


def parse_host_pattern(entry: str) -> str:
    """An exact host, or ``.suffix`` for subdomains (a ``--secret-host`` entry; no port)."""
    if entry.startswith("."):
        return "." + normalize_host(entry[1:])
    return normalize_host(entry)


#: the longest allowlist entry (the supervisor protocol's bound on ``allowHosts`` items)
MAX_ENTRY_CHARS = 254


def split_entry(entry: str) -> tuple[str, int | None]:
    """An allowlist entry in canonical form as ``(host pattern, port or None for any port)``."""
    if entry.startswith("["):  # [v6]:port
        host, _, port = entry[1:].partition("]:")
        return host, int(port)
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port)
    return entry, None  # a name, or a bare IPv6 literal (any port)


def parse_allowed_host(entry: str) -> str:
    """An ``--egress-allow`` entry in canonical form: ``HOST`` (any port), ``HOST:PORT``
    (that port only); HOST is an exact name, a ``.suffix`` for subdomains, an IPv4
    literal or an IPv6 literal (``[::1]:443`` with a port, ``::1`` without).

    :raises InvalidRequest: a malformed host or port.
    """
    text = entry.strip()
    port_text: str | None = None
    if text.startswith("[") and "]:" in text:
        text, _, port_text = text[1:].partition("]:")
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
    host = parse_host_pattern(text)
    if port_text is None:
        return host
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InvalidRequest(f"{entry!r}: {port_text!r} is not a port",
                             "give HOST for any port or HOST:PORT with a port from 1 to 65535, e.g. pypi.org:443")
    canonical = f"[{host}]:{int(port_text)}" if ":" in host else f"{host}:{int(port_text)}"
    if len(canonical) > MAX_ENTRY_CHARS:
        raise InvalidRequest(f"{entry!r} is longer than {MAX_ENTRY_CHARS} characters", "use a shorter name")
    return canonical


def host_matches(host: str, pattern: str) -> bool:
    """Whether ``host`` is ``pattern`` (exact) or under it (a ``.suffix`` pattern)."""
    return host.endswith(pattern) if pattern.startswith(".") else host == pattern


def parse_cidr(entry: str) -> str:
    """An ``--egress-allow-cidr`` entry in canonical form.

    :raises InvalidRequest: malformed, or host bits set.
    """
    try:
        return str(ipaddress.ip_network(entry.strip(), strict=True))
    except ValueError as exc:
        raise InvalidRequest(f"{entry!r} is not a CIDR: {exc}",
                             "give a network such as 10.1.0.0/16 or 127.0.0.0/8 (host bits zero)") from None


@dataclass(frozen=True)
class EgressPolicy:
    """The allowlist; the proxy refuses everything it does not name.

    ``secrets``: where each secret's value may go (:mod:`microagent.egress.secrets`); a
    host a secret is bound to is reachable as if it were on ``allow_hosts``.
    """

    allow_hosts: tuple[str, ...] = ()
    allow_cidrs: tuple[str, ...] = ()
    secrets: tuple[SecretBinding, ...] = ()

    @classmethod
    def parse(cls, hosts: Any = (), cidrs: Any = ()) -> EgressPolicy:
        """From user input (CLI, SDK, a manifest); duplicates dropped, order kept.

        :raises InvalidRequest: a malformed host or CIDR.
        """
        if isinstance(hosts, str) or isinstance(cidrs, str):
            raise InvalidRequest("egress hosts and CIDRs are lists", "pass a list, e.g. ['api.example.com']")
        return cls(tuple(dict.fromkeys(parse_allowed_host(str(h)) for h in hosts)),
                   tuple(dict.fromkeys(parse_cidr(str(c)) for c in cidrs)))

    @classmethod
    def from_wire(cls, doc: dict[str, Any]) -> EgressPolicy:
        from microagent.egress.secrets import SecretBinding

        secrets = doc.get("secrets") or []
        if not isinstance(secrets, list) or not all(isinstance(s, dict) for s in secrets):
            raise InvalidRequest("egress secrets are a list of objects", "recreate the workspace")
        policy = cls.parse(doc.get("allowHosts") or (), doc.get("allowCidrs") or ())
        return cls(policy.allow_hosts, policy.allow_cidrs, tuple(SecretBinding.from_wire(s) for s in secrets))

    def keeping_placeholders(self, current: EgressPolicy | None) -> EgressPolicy:
        """This policy with each secret that ``current`` also names keeping ``current``'s placeholder
        (the guest's environment holds it); new secrets keep their new ones."""
        if current is None or not self.secrets:
            return self
        import dataclasses

        kept = {b.name: b.placeholder for b in current.secrets}
        return dataclasses.replace(self, secrets=tuple(
            dataclasses.replace(b, placeholder=kept.get(b.name, b.placeholder)) for b in self.secrets))

    def to_wire(self) -> dict[str, Any]:
        """What the manifest, ``egress.json`` and ``status`` hold: never a secret's value."""
        wire: dict[str, Any] = {"allowHosts": list(self.allow_hosts), "allowCidrs": list(self.allow_cidrs)}
        if self.secrets:
            wire["secrets"] = [s.to_wire() for s in self.secrets]
        return wire

    def host_allowed(self, host: str, port: int | None = None) -> bool:
        """Whether ``host`` (normalized) on ``port`` is on the list (exact, or under a ``.suffix``
        entry; an entry with a port only on that port), or a secret is bound to it (any port).
        ``port`` ``None``: on some port."""
        if port is not None:
            return self.refusal(host, port) is None
        return (any(s.bound_to(host) for s in self.secrets)
                or any(host_matches(host, split_entry(e)[0]) for e in self.allow_hosts))

    def refusal(self, host: str, port: int) -> str | None:
        """Why the proxy must not connect to ``host`` on ``port``, or ``None`` when the list allows it."""
        if any(s.bound_to(host) for s in self.secrets):
            return None
        ports = []
        for entry in self.allow_hosts:
            pattern, only = split_entry(entry)
            if host_matches(host, pattern):
                if only is None or only == port:
                    return None
                ports.append(str(only))
        if ports:
            return (f"port {port} of {host} is not on the egress allowlist "
                    f"(allowed: {', '.join(dict.fromkeys(ports))})")
        return f"{host} is not on the egress allowlist"

    def address_refusal(self, address: str) -> str | None:
        """Why the proxy must not dial ``address``, or ``None`` when it may."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        networks = [ipaddress.ip_network(c) for c in self.allow_cidrs]
        if any(ip.version == n.version and ip in n for n in networks):
            return None
        for denied in _DENIED:
            if ip.version == denied.version and ip in denied:
                return f"{ip} is in the non-public range {denied}; allow it with --egress-allow-cidr"
        return None
