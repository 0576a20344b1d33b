"""``microagent-firecracker-supervisor``: Firecracker on Linux with hardware KVM."""

from __future__ import annotations

import sys

from microagent.fsutil import restrict_umask
from microagent.supervisors.base import serve
from microagent.supervisors.firecracker.backend import FirecrackerBackend


def main() -> None:
    restrict_umask()  # the VMM's sockets and logs inherit it: the user's alone
    sys.exit(serve(FirecrackerBackend, "firecracker"))
