"""``microagent-hyperv-supervisor``: Windows Hyper-V compute service (experimental).

On any host but Windows every command answers ``ok:false`` kind
``unsupported`` naming the host OS (:mod:`microagent.supervisors.foreign`);
the ctypes bindings are never loaded there.
"""

from __future__ import annotations

import sys

from microagent.fsutil import restrict_umask
from microagent.host.detect import host_os
from microagent.supervisors.base import Backend, serve
from microagent.supervisors.foreign import ForeignHostBackend


def _factory() -> Backend:
    if host_os() != "windows":
        return ForeignHostBackend("windows-hyperv", "windows")
    from microagent.supervisors.hyperv.backend import HyperVBackend

    return HyperVBackend()


def main() -> None:
    restrict_umask()  # the VMM's sockets and logs inherit it: the user's alone
    sys.exit(serve(_factory, "windows-hyperv"))
