"""Where the guest init binary (``microagent-init``) for an architecture is.

Lookup: ``MICROAGENT_GUEST_INIT`` → the copy installed in the package
(``microagent/guest/<arch>/microagent-init``, put there by ``make``) → the
build tree of a source checkout (``guest/build/<arch>/microagent-init``).
"""

from __future__ import annotations

import os
from pathlib import Path

from microagent.errors import NotFound
from microagent.paths import host_arch, package_root


def candidates(arch: str | None = None) -> list[Path]:
    arch = arch or host_arch()
    out = []
    env = os.environ.get("MICROAGENT_GUEST_INIT")
    if env:
        out.append(Path(env))
    out.append(package_root() / "guest" / arch / "microagent-init")
    out.append(package_root().parent.parent / "guest" / "build" / arch / "microagent-init")
    return out


def find_guest_init(arch: str | None = None) -> Path:
    """The guest init binary for ``arch``.

    :raises NotFound: when no built guest init exists.
    """
    env = os.environ.get("MICROAGENT_GUEST_INIT")
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
        "run 'make install' (needs musl-tools) to build guest/microagent-init",
    )
