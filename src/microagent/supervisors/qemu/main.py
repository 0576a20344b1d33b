"""``microagent-qemu-supervisor``: QEMU microVMs on Linux (KVM or TCG)."""

from __future__ import annotations

import sys

from microagent.fsutil import restrict_umask
from microagent.supervisors.base import serve
from microagent.supervisors.qemu.backend import QemuBackend


def main() -> None:
    restrict_umask()  # the VMM's sockets and logs inherit it: the user's alone
    sys.exit(serve(QemuBackend, "qemu"))
