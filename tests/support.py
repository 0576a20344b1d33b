"""Helpers shared by test packages (on sys.path via pytest's ``pythonpath``)."""

from __future__ import annotations

import subprocess


def vmm_processes(marker: str) -> list[str]:
    """``pid args`` lines of live VMM, channel-helper and pasta processes mentioning ``marker``.

    Zombies (state Z: exited, parent has not reaped) are not running and are skipped.
    """
    out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines()[1:]:
        pid, stat, args = (line.strip().split(None, 2) + ["", ""])[:3]
        if stat.startswith("Z") or marker not in args:
            continue
        if ("qemu-system" in args or "firecracker" in args or "microagent.channel.router" in args
                or "pasta.pid" in args):  # pasta names its pid file in the runtime dir
            found.append(f"{pid} {args}")
    return found
