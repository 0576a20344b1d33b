"""``microagent host`` and ``microagent doctor``: the host, explained.

Builds a report from :func:`microagent.host.detect.detect`: each check has a
name, whether it passed, whether the active backend needs it, what was seen,
and a remediation line when it failed.  The verdict is ``failed`` when a
required check fails, ``degraded`` when only optional ones do, else ``ok``.
"""

from __future__ import annotations

import os

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from microagent.host.detect import HostFacts, detect
from microagent.host.selection import Selection, select_backend


@dataclass
class Check:
    name: str
    ok: bool
    required: bool
    detail: str
    remediation: str = ""


def _guest_init_check(arch: str) -> Check:
    from microagent.errors import MicroagentError
    from microagent.guestinit import find_guest_init

    try:
        path = find_guest_init(arch)
    except MicroagentError as exc:
        return Check("guest-init", False, True, exc.message, exc.remediation)
    return Check("guest-init", True, True, str(path))


def kernel_report(state_root: Path, backend: str, arch: str) -> dict[str, Any]:
    from microagent.kernels import kernel_status

    return kernel_status(state_root, backend, arch)


def _foreign_guest_checks(facts: HostFacts) -> list[Check]:
    """Guests of another architecture (``--arch``): QEMU emulates them with TCG, slowly."""
    from microagent.host.detect import probe_tool, qemu_binary_name

    out = []
    for arch, package in (("x86_64", "qemu-system-x86"), ("aarch64", "qemu-system-arm")):
        if arch == facts.architecture:
            continue
        tool = probe_tool(qemu_binary_name(arch), version=False)
        detail = (f"{tool.path}: emulated by TCG, even where KVM exists (slow: CPU-bound work many times slower)"
                  if tool.available else tool.error)
        out.append(Check(f"{arch}-guests", tool.available, False, detail,
                         f"apt-get install {package} (or run 'make install')"))
    return out


def checks_for(backend: str, facts: HostFacts, kernel: dict[str, Any]) -> list[Check]:
    """The checks that matter for ``backend`` on this host."""
    out: list[Check] = []
    tools = facts.tools
    if backend == "qemu":
        qemu = tools["qemu"]
        out.append(Check("qemu", qemu.available, True,
                         f"{qemu.path} ({qemu.version})" if qemu.available else qemu.error,
                         "apt-get install qemu-system-x86 (or run 'make install')"))
        accel = "kvm" if facts.kvm.kind == "hardware" else "tcg"
        out.append(Check("acceleration", True, False, f"{accel}: {facts.kvm.detail}"))
        out.extend(_foreign_guest_checks(facts))
    if backend == "firecracker":
        fc = tools["firecracker"]
        out.append(Check("firecracker", fc.available, True,
                         f"{fc.path} ({fc.version})" if fc.available else fc.error,
                         "run 'make install' to place the pinned firecracker, or set MICROAGENT_FIRECRACKER"))
        out.append(Check("kvm", facts.kvm.kind == "hardware", True, facts.kvm.detail,
                         "firecracker needs hardware KVM; use --backend qemu on this host"))
        out.append(Check("vhost-vsock", facts.vhost_vsock, True,
                         "/dev/vhost-vsock present" if facts.vhost_vsock else "/dev/vhost-vsock missing",
                         "modprobe vhost_vsock"))
    if facts.os == "linux":
        for tool, pkg in (("mke2fs", "e2fsprogs"), ("debugfs", "e2fsprogs")):
            t = tools[tool]
            out.append(Check(tool, t.available, True, t.path or t.error, f"apt-get install {pkg}"))
        out.append(Check("tun", facts.tun, False,
                         "/dev/net/tun present" if facts.tun else "/dev/net/tun missing",
                         "modprobe tun (needed for --network nat)"))
        out.extend(network_checks(backend, facts))
    out.append(_guest_init_check(facts.architecture))
    status = kernel.get("status")
    # outdated: it boots, but lacks a module a feature needs (virtiofs for host folders)
    out.append(Check("kernel", status == "installed", status != "outdated",
                     f"{status}: {kernel.get('path', '')}"
                     + (f" ({kernel.get('detail')})" if status == "outdated" else ""),
                     f"run 'microagent kernel install --backend {backend}'"))
    return out


def network_checks(backend: str, facts: HostFacts) -> list[Check]:
    """Readiness of each network mode on this host (none is required: isolated always works)."""
    from microagent.network import nat, pasta

    out = [Check("network-isolated", True, False, "no NIC; always available")]
    if backend == "qemu" and os.environ.get(pasta.QEMU_USER_NETWORK_ENV, "") == "slirp":
        out.append(Check("network-user", False, False,
                         f"qemu built-in slirp ({pasta.QEMU_USER_NETWORK_ENV}=slirp): unfiltered, the guest "
                         "reaches the host's loopback, the LAN and cloud metadata",
                         f"unset {pasta.QEMU_USER_NETWORK_ENV} to use pasta, which filters (needs root)"))
    else:  # pasta: firecracker's only way, qemu's default
        from microagent.host import pasta_binary

        ready, detail = pasta.readiness()
        if ready and not pasta_binary.is_pinned(pasta.pasta_binary()):
            detail += ("; not the pinned pasta: Debian 12's resets a connection on which the host sent "
                       "nothing for 24 s (long uploads); run 'make install' to build the pinned one")
        out.append(Check("network-user", ready, False,
                         f"pasta in a network namespace per workspace: {detail}" if ready
                         else detail.split("; ")[0], "" if ready else detail.split("; ", 1)[-1]))
    ready, detail = nat.readiness()
    out.append(Check("network-nat", ready, False, detail if ready else detail.split("; ")[0],
                     "" if ready else detail.split("; ", 1)[-1]))
    return out


def verdict(checks: list[Check]) -> str:
    if any(not c.ok and c.required for c in checks):
        return "failed"
    if any(not c.ok for c in checks):
        return "degraded"
    return "ok"


def report(state_root: Path, requested_backend: str | None = None,
           facts: HostFacts | None = None) -> dict[str, Any]:
    """The ``doctor`` document: ``{ok, verdict, backend, reason, host, kernel, checks}``.

    :raises Unsupported: when ``requested_backend`` cannot run on this host OS.
    """
    facts = facts or detect()
    selection: Selection = select_backend(requested_backend, facts)
    kernel = kernel_report(state_root, selection.backend, facts.architecture)
    checks = checks_for(selection.backend, facts, kernel)
    v = verdict(checks)
    networks = {c.name.removeprefix("network-"): {"ready": c.ok, "detail": c.detail}
                for c in checks if c.name.startswith("network-")}
    return {
        "ok": v != "failed",
        "verdict": v,
        "backend": selection.backend,
        "reason": selection.reason,
        "host": facts.to_json(),
        "kernel": kernel,
        "networks": networks,
        "checks": [asdict(c) for c in checks],
    }
