"""``microagent-applevf-supervisor``: Apple Virtualization.framework (macOS).

On any other host OS every command answers ``ok:false``, kind
``unsupported``, naming the host OS (:class:`~microagent.supervisors.foreign.ForeignHostBackend`);
nothing macOS-specific is imported then.  On macOS the backend
(:mod:`.backend`) never imports PyObjC either: only its per-workspace host
process (:mod:`.vmhost`) does.
"""

from __future__ import annotations

import sys

from microagent.fsutil import restrict_umask
from microagent.host.detect import host_os
from microagent.supervisors.base import Backend, serve
from microagent.supervisors.foreign import ForeignHostBackend


def _factory() -> Backend:
    if host_os() != "darwin":
        return ForeignHostBackend("apple-vf", "darwin")
    from microagent.supervisors.applevf.backend import AppleVFBackend

    return AppleVFBackend()


def main() -> None:
    restrict_umask()  # the VMM's sockets and logs inherit it: the user's alone
    sys.exit(serve(_factory, "apple-vf"))
