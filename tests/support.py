"""Helpers shared by test packages (on sys.path via pytest's ``pythonpath``)."""

from __future__ import annotations

import subprocess


def vmm_processes(marker: str) -> list[str]:
    """``pid args`` lines of VMM processes whose arguments mention ``marker``."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines()
            if ("qemu-system" in line or "firecracker" in line) and marker in line]
