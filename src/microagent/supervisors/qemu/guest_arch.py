"""Which QEMU runs a guest: the guest's architecture, read from its kernel.

The kernel decides (an arm64 Image boots only on ``qemu-system-aarch64``), so
the wire config needs no architecture field.  A guest of the host's
architecture uses the probed ``qemu-system-<host>`` with KVM where usable; any
other is emulated by TCG, instruction by instruction: it works, slowly.
"""

from __future__ import annotations

from pathlib import Path

from microagent.errors import PolicyDenied
from microagent.host.detect import HostFacts, probe_tool, qemu_binary_name
from microagent.kernels.vmlinux import kernel_architecture

__all__ = ["EMULATED_NOTE", "guest_arch", "guest_architectures", "vmm_for"]

GUEST_ARCHES = ("x86_64", "aarch64")
DEB_PACKAGE = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}
EMULATED_NOTE = "emulated by TCG, even where KVM exists: CPU-bound work runs many times slower than native"


def guest_arch(kernel_path: str) -> str:
    """:raises NotFound, Permanent: the kernel is missing or not a kernel."""
    return kernel_architecture(Path(kernel_path))


def vmm_for(arch: str, facts: HostFacts, accel: str) -> tuple[str, str]:
    """``(binary, accel)`` for a guest of ``arch`` on this host.

    :raises PolicyDenied: that architecture's QEMU is not installed.
    """
    tool = facts.tools["qemu"] if arch == facts.architecture else probe_tool(qemu_binary_name(arch), version=False)
    if not tool.available:
        raise PolicyDenied(f"{qemu_binary_name(arch)} is not installed: {tool.error}",
                           f"apt-get install {DEB_PACKAGE.get(arch, 'qemu-system')} (or run 'make install')")
    return str(tool.path), accel if arch == facts.architecture else "tcg"


def guest_architectures(facts: HostFacts, accel: str) -> dict[str, dict[str, object]]:
    """For ``host``: each guest architecture, its QEMU, and whether it is emulated."""
    out: dict[str, dict[str, object]] = {}
    for arch in GUEST_ARCHES:
        native = arch == facts.architecture
        tool = facts.tools["qemu"] if native else probe_tool(qemu_binary_name(arch), version=False)
        out[arch] = {"binaryPath": tool.path or "", "available": tool.available,
                     "accel": accel if native else "tcg", "emulated": not native,
                     "note": "" if native else EMULATED_NOTE}
    return out
