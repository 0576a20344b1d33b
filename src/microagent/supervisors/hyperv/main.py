"""``microagent-hyperv-supervisor``: Windows Hyper-V compute service (experimental)."""

from __future__ import annotations

import sys

from microagent.host.detect import host_os
from microagent.supervisors.base import Backend, serve
from microagent.supervisors.foreign import ForeignHostBackend


class HyperVBackend(Backend):
    """Placeholder until issue #7 lands: refuses every command as unsupported."""

    name = "windows-hyperv"


def _factory() -> Backend:
    if host_os() != "windows":
        return ForeignHostBackend("windows-hyperv", "windows")
    return HyperVBackend()


def main() -> None:
    sys.exit(serve(_factory, "windows-hyperv"))
