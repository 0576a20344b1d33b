"""``-p/--publish [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp]`` specs (pure: no I/O).

Published ports are host listeners bridged over the guest channel, so they
work the same on every backend and every network mode except ``isolated``
(which by contract has no path in or out).
"""

from __future__ import annotations

import ipaddress

from microagent.errors import InvalidRequest
from microagent.vmkit.types import NETWORK_MODES, PortForward


def parse_publish(spec: str) -> PortForward:
    """Parse one publish spec; the default host address is 127.0.0.1.

    :raises InvalidRequest: naming what is wrong with ``spec``.
    """
    text, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto == "udp":
        raise InvalidRequest(f"publish spec {spec!r}: udp is not supported", "publish tcp ports only")
    if proto != "tcp":
        raise InvalidRequest(f"publish spec {spec!r}: unknown protocol {proto!r}", "use /tcp or nothing")
    host = "127.0.0.1"
    if text.startswith("["):  # [::1]:8080:80
        end = text.find("]")
        if end < 0:
            raise InvalidRequest(f"publish spec {spec!r}: unclosed '['")
        host, text = text[1:end], text[end + 2:]
    parts = text.split(":")
    if len(parts) == 3:
        host, parts = parts[0], parts[1:]
    if len(parts) != 2:
        raise InvalidRequest(f"publish spec {spec!r}: expected [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidRequest(f"publish spec {spec!r}: {host!r} is not an IP address") from None
    ports = []
    for p in parts:
        if not p.isdigit() or not 1 <= int(p) <= 65535:
            raise InvalidRequest(f"publish spec {spec!r}: port {p!r} must be a number from 1 to 65535")
        ports.append(int(p))
    return PortForward(hostPort=ports[0], guestPort=ports[1], host=host, protocol="tcp")


def check_network(mode: str, publish: tuple[PortForward, ...], allow_host_loopback: bool = False) -> None:
    """:raises InvalidRequest: unknown mode, duplicate host ports, or publishing (or host access)
    from isolated."""
    if mode not in NETWORK_MODES:
        raise InvalidRequest(f"unknown network mode {mode!r}", f"use one of: {', '.join(NETWORK_MODES)}")
    if allow_host_loopback and mode == "isolated":
        raise InvalidRequest("--allow-host-loopback needs a network: an isolated workspace has no path in "
                             "or out", "add --network user (or nat)")
    if publish and mode == "isolated":
        raise InvalidRequest("published ports cannot be used with network mode isolated: an isolated "
                             "workspace has no path in or out", "use --network user or --network nat")
    seen = set()
    for p in publish:
        if (p.host, p.hostPort) in seen:
            raise InvalidRequest(f"host port {p.host}:{p.hostPort} is published twice")
        seen.add((p.host, p.hostPort))


def describe(p: PortForward) -> str:
    return f"{p.host}:{p.hostPort}->{p.guestPort}/tcp"
