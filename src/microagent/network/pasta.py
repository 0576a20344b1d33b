"""User networking through pasta: a network namespace per workspace, joined to the host by pasta.

``--network user`` on firecracker (no built-in user-mode network) and on QEMU
(unless told to use its unfiltered slirp) runs the VMM inside a network
namespace of its own::

    guest eth0 ── VMM ── TAP vmtap0 ══ tc u32 + mirred ══ pasta0 ── pasta ── host sockets
                  └────────── netns microagent-<hash> ──────────┘

- The namespace is a named one (``ip netns add``): operators see it in
  ``ip netns list``, and pasta (which drops most capabilities) can join it by
  name where it could not open ``/proc/<pid>/ns/net``.
- pasta owns ``pasta0`` and turns the guest's frames into ordinary sockets of
  the host: no host TAP, no firewall rule, no sysctl.  It is given the
  addressing QEMU's slirp uses (guest 10.0.2.15/24, gateway 10.0.2.2, DNS
  10.0.2.3 forwarded to the host's resolver), so the guest's per-boot config
  is the same for both; IPv4 only.  The gateway reaches the host's loopback
  only when the workspace allows it (``allowHostLoopback``).
- The VMM's TAP and ``pasta0`` are joined at layer 2 by tc ``mirred``
  redirects: the namespace has no address and routes nothing; the guest talks
  to pasta directly.  From the guest, only what :mod:`.egress` allows is
  redirected (:func:`guest_filters`): pasta would otherwise connect to any
  address the guest names, the LAN and cloud metadata included.
- pasta forwards no port in either direction (``-t/-u/-T/-U none``):
  published ports go over the guest channel, as on every backend.

Deleting the namespace's name makes pasta exit; the supervisor also kills it
by its recorded PID.  Creating a named namespace needs root (CAP_SYS_ADMIN and
CAP_NET_ADMIN): without it :func:`check_preconditions` fails closed.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from microagent.errors import NotFound, Permanent, PolicyDenied, Transient
from microagent.network.egress import DENIED_IPV4
from microagent.network.plan import NETNS_DIR, USER_DNS, USER_GATEWAY, USER_GUEST_ADDRESS
from microagent.waiting import wait_until

ENV_VAR = "MICROAGENT_PASTA"
#: ``pasta`` makes the QEMU backend take this path for ``user`` instead of slirp
QEMU_USER_NETWORK_ENV = "MICROAGENT_QEMU_USER_NETWORK"
#: the VMM's TAP inside the namespace (names there cannot clash with the host's)
VMM_TAP = "vmtap0"
#: pasta's own TAP inside the namespace
PASTA_IF = "pasta0"
#: how long pasta may take to create its interface in the namespace
PASTA_READY_TIMEOUT_S = 5.0
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21


def namespace_name(runtime_dir: Path) -> str:
    """``microagent-`` + 10 hex chars of the hash of the workspace's runtime directory.

    The path, not the name: two state roots (or users) on one host may both
    have a workspace ``ws``, and :func:`create` replaces a namespace of the
    same name (a crashed boot's leftover).
    """
    return "microagent-" + hashlib.sha256(str(runtime_dir.absolute()).encode()).hexdigest()[:10]


def namespace_path(namespace: str) -> Path:
    return Path(NETNS_DIR) / namespace


def pasta_argv(namespace: str, pid_file: Path, binary: str = "pasta", *, map_host_loopback: bool = False,
               dns_host: str = "") -> list[str]:
    """pasta attached to ``namespace``, in the foreground (the supervisor detaches it).

    ``pid_file`` sits in the runtime directory, so pasta's command line names
    the workspace it serves (pasta itself changes to ``/``).  IPv4 only, and
    the gateway is not the host's loopback unless ``map_host_loopback``.
    ``--runas 0``: pasta as another user cannot join a namespace root made
    (measured: "Couldn't switch to pasta namespaces"); as root it keeps only
    CAP_SYS_ADMIN and CAP_NET_BIND_SERVICE, under seccomp in an empty mount namespace.
    """
    return [binary, "--foreground", "--quiet", "--runas", "0", "--netns", namespace, "--pid", str(pid_file),
            "--ns-ifname", PASTA_IF, "--ipv4-only",
            "--address", USER_GUEST_ADDRESS, "--netmask", "24", "--gateway", USER_GATEWAY,
            *(() if map_host_loopback else ("--no-map-gw",)),
            # the guest's resolver is 10.0.2.3 (also in pasta's DHCP answers), forwarded to the host's
            "--dns", USER_DNS, "--dhcp-dns", "--dns-forward", USER_DNS,
            # named: with --dns given, pasta reads no resolver of its own and the queries went nowhere
            *(("--dns-host", dns_host) if dns_host and knows_option(binary, "--dns-host") else ()),
            # no port forwarding either way: published ports use the guest channel
            "--tcp-ports", "none", "--udp-ports", "none", "--tcp-ns", "none", "--udp-ns", "none"]


@functools.lru_cache(maxsize=8)
def knows_option(binary: str, option: str) -> bool:
    """Whether this pasta build has ``option`` (Debian 12's lacks ``--dns-host``)."""
    try:
        proc = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in proc.stdout + proc.stderr


# A u32 match on ports reads fixed offsets: it is right only for an IPv4 header without
# options (first byte 0x45) on an unfragmented packet (flags MF and offset zero).
_PLAIN_IPV4 = ("match", "u8", "0x45", "0xff", "at", "0", "match", "u16", "0", "0x3fff", "at", "6")


def _to_port(address: str, proto: int, port: int) -> tuple[str, ...]:
    return (*_PLAIN_IPV4, "match", "ip", "protocol", str(proto), "0xff", "match", "ip", "dst", f"{address}/32",
            "match", "ip", "dport", str(port), "0xffff")


def guest_filters(allow_gateway: bool) -> list[list[str]]:
    """tc filters on the VMM TAP's ingress, in priority order: what the guest may send to pasta.

    An allowed frame is redirected to ``pasta0``; a denied one matches a
    filter without an action, which ends classification and leaves the
    frame to the namespace's own stack (no address, no route, no
    forwarding): it is dropped there.  Frames no filter matches (IPv6, VLAN,
    anything but IPv4 and ARP) stay in the namespace too.  (Not ``gact drop``:
    kernels without ``act_gact`` exist, ours among them.)
    """
    to_pasta = ("action", "mirred", "egress", "redirect", "dev", PASTA_IF)
    allowed = [_to_port(USER_DNS, 17, 53), _to_port(USER_DNS, 6, 53),
               _to_port("255.255.255.255", 17, 67)]  # pasta's DHCP server
    if allow_gateway:
        allowed.append(("match", "ip", "dst", f"{USER_GATEWAY}/32"))
    filters = [["protocol", "ip", "prio", str(prio), "u32", *match, *to_pasta]
               for prio, match in enumerate(allowed, start=1)]
    filters += [["protocol", "ip", "prio", "10", "u32", "match", "ip", "dst", net, "flowid", "ffff:1"]
                for net in DENIED_IPV4]
    filters += [["protocol", proto, "prio", str(prio), "u32", "match", "u32", "0", "0", *to_pasta]
                for prio, proto in ((20, "ip"), (21, "arp"))]
    return filters


def host_resolver(resolv_conf: str) -> str:
    """The host's first IPv4 nameserver (loopback ones too: pasta queries it from the host), or ''."""
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                return str(ipaddress.IPv4Address(parts[1]))
            except ValueError:
                continue
    return ""


def _caps(status: str | None = None) -> int:
    text = status if status is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def installed_path(prefix: str | None = None) -> Path:
    """Where ``python -m microagent.host.pasta_binary install`` puts the pinned build."""
    return Path(prefix if prefix is not None else sys.prefix) / "libexec" / "pasta"


def pasta_binary(env: Mapping[str, str] | None = None) -> str | None:
    """``$MICROAGENT_PASTA`` → the pinned build in ``<venv>/libexec`` → ``PATH``.

    The pinned build comes before ``PATH`` on purpose: Debian 12's pasta
    (2023-03-09) resets a TCP connection 24 s after it opened when the host
    side has sent nothing on it (a long one-way upload).
    """
    env = os.environ if env is None else env
    override = env.get(ENV_VAR)
    if override:
        return override if Path(override).is_file() else None
    pinned = installed_path()
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return str(pinned)
    return shutil.which("pasta", path=env.get("PATH", os.defpath)) or shutil.which("pasta", path="/usr/bin:/usr/sbin")


def check_preconditions(status: str | None = None) -> None:
    """Everything :func:`create` needs, checked before any change.

    :raises NotFound: pasta, ``ip``, ``tc``, ``nsenter`` or ``/dev/net/tun`` missing.
    :raises PolicyDenied: no CAP_SYS_ADMIN + CAP_NET_ADMIN (root).
    """
    if pasta_binary() is None:
        raise NotFound("user networking for this backend needs pasta, which is not installed"
                       + (f" (${ENV_VAR} names no file)" if os.environ.get(ENV_VAR) else ""),
                       "run 'python -m microagent.host.pasta_binary install' (or 'make install'), "
                       "or apt-get install passt; or use --network nat")
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("nsenter", "util-linux")):
        if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")):
            raise NotFound(f"user networking needs {tool}, which is not installed", f"apt-get install {package}")
    if not Path("/dev/net/tun").exists():
        raise NotFound("/dev/net/tun is missing", "modprobe tun")
    caps = _caps(status)
    if not (caps >> CAP_SYS_ADMIN) & 1 or not (caps >> CAP_NET_ADMIN) & 1:
        raise PolicyDenied("user networking through pasta needs root here: the workspace gets its own "
                           "named network namespace (CAP_SYS_ADMIN, CAP_NET_ADMIN)",
                           "run as root, or use --network isolated; on the qemu backend, "
                           f"{QEMU_USER_NETWORK_ENV}=slirp needs no privilege but is unfiltered (the guest "
                           "reaches the host's loopback, the LAN and cloud metadata)")


def readiness() -> tuple[bool, str]:
    """Whether pasta user networking can work here, and if not, what to do (for doctor)."""
    try:
        check_preconditions()
    except (NotFound, PolicyDenied) as exc:
        return False, f"{exc.message}; {exc.remediation}"
    return True, f"{pasta_binary()}, root, /dev/net/tun, ip, tc and nsenter present"


def _ip(*args: str, what: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Permanent(f"{what} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def _tc(namespace: str, *args: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", namespace, "tc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Permanent(f"tc {' '.join(args[:3])} in {namespace} failed: {proc.stderr.strip()}",
                        "the kernel needs the ingress qdisc, the u32 classifier and the mirred action")


def exists(namespace: str) -> bool:
    return namespace_path(namespace).exists()


def create(namespace: str) -> None:
    """The namespace with ``lo`` up and the VMM's TAP; a stale one of the same name is replaced."""
    if exists(namespace):
        delete(namespace)
    _ip("netns", "add", namespace, what=f"creating network namespace {namespace}")
    try:
        _ip("-n", namespace, "link", "set", "lo", "up", what="bringing lo up")
        _ip("-n", namespace, "tuntap", "add", "dev", VMM_TAP, "mode", "tap", what=f"creating {VMM_TAP}")
        _ip("-n", namespace, "link", "set", VMM_TAP, "up", what=f"bringing {VMM_TAP} up")
    except BaseException:
        delete(namespace)
        raise


def wait_for_pasta(namespace: str, pasta: subprocess.Popen[bytes], log: Path, *,
                   allow_gateway: bool = False) -> None:
    """Wait until pasta's interface exists in the namespace, then join it to the VMM's TAP
    through the guest's filters (:func:`guest_filters`).

    :raises Permanent: pasta exited (its log says why).  :raises Transient: it took too long.
    """

    def interface_up() -> bool:
        probe = subprocess.run(["ip", "-n", namespace, "link", "show", PASTA_IF], capture_output=True)
        if probe.returncode == 0:
            return True
        if pasta.poll() is not None:
            raise Permanent(f"pasta exited with status {pasta.returncode}: {_tail(log)}",
                            f"pasta needs a host interface with a default route to copy; see {log}")
        return False

    if not wait_until(interface_up, PASTA_READY_TIMEOUT_S, 0.02):
        raise Transient(f"pasta did not create {PASTA_IF} within {PASTA_READY_TIMEOUT_S:.0f}s: {_tail(log)}",
                        f"see {log}")
    _ip("-n", namespace, "link", "set", PASTA_IF, "up", what=f"bringing {PASTA_IF} up")
    for dev in (PASTA_IF, VMM_TAP):
        # a restarted pasta: drop the old redirects (to a device that is gone) with their qdisc
        subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", dev, "ingress"],
                       capture_output=True)
        _tc(namespace, "qdisc", "add", "dev", dev, "ingress")
    # pasta → guest: everything
    _tc(namespace, "filter", "add", "dev", PASTA_IF, "parent", "ffff:", "protocol", "all",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", VMM_TAP)
    for spec in guest_filters(allow_gateway):  # guest → pasta: only what egress allows
        _tc(namespace, "filter", "add", "dev", VMM_TAP, "parent", "ffff:", *spec)


def _tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines()
                 if ln.strip() and "syslog" not in ln  # pasta complains when there is no syslog
                 and "AVX2" not in ln]  # ...and that the pinned build has no AVX2 twin
    except OSError:
        return "no log output"
    return " | ".join(lines[-3:]) or "no log output"


def delete(namespace: str) -> bool:
    """Remove the namespace's name (pasta exits; the TAPs go with the last process inside)."""
    if not exists(namespace):
        return False
    subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
    return True
