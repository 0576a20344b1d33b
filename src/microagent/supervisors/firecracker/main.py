"""``microagent-firecracker-supervisor``: Firecracker on Linux with hardware KVM."""

from __future__ import annotations

import sys

from microagent.supervisors.base import serve
from microagent.supervisors.firecracker.backend import FirecrackerBackend


def main() -> None:
    sys.exit(serve(FirecrackerBackend, "firecracker"))
