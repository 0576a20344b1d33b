"""``microagent-qemu-supervisor``: QEMU microVMs on Linux (KVM or TCG)."""

from __future__ import annotations

import sys

from microagent.supervisors.base import serve
from microagent.supervisors.qemu.backend import QemuBackend


def main() -> None:
    sys.exit(serve(QemuBackend, "qemu"))
