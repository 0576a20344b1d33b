"""What a network mode means for one workspace (pure: no I/O).

``isolated``: no NIC at all, only ``lo``.  ``user``: egress without host
firewall changes, through pasta in a network namespace of the workspace's
own (:mod:`.pasta`), or QEMU's built-in slirp when asked for (unfiltered);
either way the guest is 10.0.2.15/24 behind the gateway 10.0.2.2.
``nat``: a TAP per workspace on a /30 the project allocates; the host end is
``.1``, the guest ``.2``; masquerade in the project's own nftables table.
What either may reach: :mod:`.egress`.

The guest learns its addressing from the per-boot config (docs/protocol.md);
this module produces that ``network`` object.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Any

from msgspec import Struct, field

USER_GUEST_ADDRESS = "10.0.2.15"
USER_GATEWAY = "10.0.2.2"
USER_DNS = "10.0.2.3"
NAT_POOL = ipaddress.ip_network("10.213.0.0/16")
NAT_PREFIX = 30
GUEST_NIC = "eth0"
#: where ``ip netns`` keeps named network namespaces
NETNS_DIR = "/run/netns"
HOST_ALIAS = "host.microagent.internal"


def tap_name(runtime_dir: Path) -> str:
    """A stable TAP name within IFNAMSIZ (15): ``mat`` + 10 hex chars of the hash of the
    workspace's runtime directory (not its name: two state roots may both have ``ws``)."""
    return "mat" + hashlib.sha256(str(runtime_dir.absolute()).encode()).hexdigest()[:10]


def guest_mac(runtime_dir: Path) -> str:
    """The guest NIC's MAC: locally administered unicast (``02:``) + 5 bytes of the hash of
    the runtime directory, so every workspace, and every fork of one snapshot, has its own.
    Guest init sets it (the VMM's device keeps its default, or a snapshot's, until then)."""
    digest = hashlib.sha256(b"mac:" + str(runtime_dir.absolute()).encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


class NatLease(Struct, frozen=True):
    """One allocated /30: network, host (TAP) address, guest address."""

    subnet: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def host_address(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def guest_address(self) -> str:
        return str(self.network.network_address + 2)


class NetworkPlan(Struct, frozen=True):
    mode: str
    tap: str = ""
    lease: NatLease | None = None
    dns: tuple[str, ...] = field(default_factory=tuple)
    #: ``user`` only: ``slirp`` (QEMU's own) or ``pasta``
    provider: str = ""
    #: ``user`` through pasta: the named network namespace the VMM runs in
    namespace: str = ""
    #: ``nat``: the tool holding the rules (``nft`` or ``iptables``)
    firewall: str = ""
    #: the guest may reach the host through its gateway (network/egress.py)
    allow_host_loopback: bool = False
    #: the guest NIC's MAC (:func:`guest_mac`); empty: the VMM's default
    mac: str = ""

    def guest_config(self) -> dict[str, Any]:
        """The ``network`` object of the per-boot config."""
        mac = {"mac": self.mac} if self.mac else {}
        if self.mode == "user":
            return {"interfaces": [{"name": GUEST_NIC, "address": USER_GUEST_ADDRESS, "prefix": 24,
                                    "gateway": USER_GATEWAY, **mac}],
                    "dns": [USER_DNS],
                    "hosts": [{"address": USER_GATEWAY, "names": [HOST_ALIAS]}]}
        if self.mode == "nat" and self.lease is not None:
            return {"interfaces": [{"name": GUEST_NIC, "address": self.lease.guest_address,
                                    "prefix": NAT_PREFIX, "gateway": self.lease.host_address, **mac}],
                    "dns": list(self.dns),
                    "hosts": [{"address": self.lease.host_address, "names": [HOST_ALIAS]}]}
        return {"interfaces": [], "dns": [], "hosts": []}

    def qemu_args(self) -> list[str]:
        """QEMU arguments for the NIC (none for ``isolated``)."""
        if self.mode == "user" and self.provider != "pasta":
            return ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"]
        if self.tap:
            return ["-netdev", f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
                    "-device", "virtio-net-device,netdev=net0"]
        return []

    def vmm_prefix(self) -> list[str]:
        """The argv prefix that starts the VMM in the plan's namespace (``nsenter`` execs: same PID)."""
        if not self.namespace:
            return []
        return ["nsenter", f"--net={NETNS_DIR}/{self.namespace}", "--"]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mac:
            out["guestMac"] = self.mac
        if self.mode != "isolated":
            # slirp cannot filter: its guest reaches the host's loopback and every network
            out.update(allowHostLoopback=self.allow_host_loopback or self.provider == "slirp",
                       filtered=self.provider != "slirp")
        if self.mode == "user":
            out.update(provider=self.provider or "slirp", guestAddress=USER_GUEST_ADDRESS,
                       gateway=USER_GATEWAY, dns=[USER_DNS])
            if self.namespace:
                out.update(namespace=self.namespace, tap=self.tap)
        if self.lease is not None:
            out.update(tap=self.tap, subnet=self.lease.subnet, hostAddress=self.lease.host_address,
                       guestAddress=self.lease.guest_address, dns=list(self.dns), firewall=self.firewall)
        return out


def host_nameservers(resolv_conf: str) -> tuple[str, ...]:
    """Nameservers a NAT guest can use: the host's, minus loopback ones it cannot reach."""
    out = []
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(parts[1])
            except ValueError:
                continue
            if not addr.is_loopback and addr.version == 4:
                out.append(str(addr))
    return tuple(out)
