"""``microagent-applevf-supervisor``: Apple Virtualization.framework (macOS)."""

from __future__ import annotations

import sys

from microagent.host.detect import host_os
from microagent.supervisors.base import Backend, serve
from microagent.supervisors.foreign import ForeignHostBackend


class AppleVFBackend(Backend):
    """Placeholder until issue #7 lands: answers ``host``, refuses the rest."""

    name = "apple-vf"


def _factory() -> Backend:
    if host_os() != "darwin":
        return ForeignHostBackend("apple-vf", "darwin")
    return AppleVFBackend()


def main() -> None:
    sys.exit(serve(_factory, "apple-vf"))
