"""Where a guest's packets may go (pure: no I/O).

``user`` and ``nat`` give a guest the internet, not the host's
neighbourhood: by default no packet from the guest reaches the host's
loopback, the cloud metadata service (169.254.169.254), the LAN or another
workspace.  Both modes refuse the same IPv4 destinations (pasta through tc
filters in the workspace's namespace, nat through our firewall rules); IPv6
from the guest is not carried at all.  What the guest needs is let through
by name: its DNS resolver, and for ``user`` pasta's DHCP server.

``allowHostLoopback`` (``--allow-host-loopback``) opens the one way back to
the host a user may want: the gateway (10.0.2.2 for ``user``, which pasta
then maps to the host's loopback; the TAP's host address for ``nat``).
"""

from __future__ import annotations

#: IPv4 destinations no guest reaches: "this network", RFC 1918, CGNAT, loopback,
#: link-local (cloud metadata), multicast, reserved and broadcast.  ``user``'s own
#: 10.0.2.0/24 and nat's leases (10.213.0.0/16) are inside 10.0.0.0/8.
DENIED_IPV4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
