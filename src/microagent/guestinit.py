"""Guest init as the host sees it: where its binary is, and the kernel command
line it reads (the ``microagent.*`` boot parameters, docs/protocol.md).

Binary lookup, per guest architecture: ``MICROAGENT_GUEST_INIT`` (the host
architecture's only: one path cannot serve two) → the copy installed in the
package (``microagent/guest/<arch>/microagent-init``, put there by ``make
guest``, which builds x86_64 and aarch64) → the build tree of a source
checkout (``guest/build/<arch>/microagent-init``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from microagent.errors import NotFound
from microagent.paths import host_arch, package_root


def _env_override(arch: str) -> str:
    return os.environ.get("MICROAGENT_GUEST_INIT", "") if arch == host_arch() else ""


def candidates(arch: str | None = None) -> list[Path]:
    arch = arch or host_arch()
    out = []
    env = _env_override(arch)
    if env:
        out.append(Path(env))
    out.append(package_root() / "guest" / arch / "microagent-init")
    out.append(package_root().parent.parent / "guest" / "build" / arch / "microagent-init")
    return out


def find_guest_init(arch: str | None = None) -> Path:
    """The guest init binary for ``arch``.

    :raises NotFound: when no built guest init exists.
    """
    env = _env_override(arch or host_arch())
    if env and not Path(env).is_file():
        raise NotFound(
            f"MICROAGENT_GUEST_INIT points at {env}, which does not exist",
            "unset MICROAGENT_GUEST_INIT or point it at a built microagent-init",
        )
    for path in candidates(arch):
        if path.is_file():
            return path
    raise NotFound(
        f"guest init for {arch or host_arch()} is not built",
        "run 'make guest' (x86_64 needs musl-tools; aarch64 the venv's ziglang) to build guest/microagent-init",
    )


def kernel_cmdline(vmm_args: str, *, root: str, channel: str, hostname: str,
                   shutdown: Literal["poweroff", "reboot"] = "poweroff", config: str | None = None,
                   extra: str = "") -> str:
    """The guest kernel command line, the same shape for every backend.

    :param vmm_args: the backend's own kernel arguments (console, panic…), first.
    :param root: the root block device (``microagent.root``).
    :param channel: ``virtio-serial:NAME`` or ``vsock:PORT`` (``microagent.channel``).
    :param shutdown: what ``poweroff`` does: ``reboot`` where the VMM has no
        ACPI power-off but exits when its guest resets (``microagent.shutdown``).
    :param config: the config disk's device, when there is one (``microagent.config``).
    :param extra: the user's ``kernelArgs``, last so that they win.
    """
    parts = [vmm_args, f"microagent.root={root}", f"microagent.channel={channel}",
             f"microagent.hostname={hostname}", f"microagent.shutdown={shutdown}"]
    if config:
        parts.append(f"microagent.config={config}")
    if extra:
        parts.append(extra)
    return " ".join(parts)
