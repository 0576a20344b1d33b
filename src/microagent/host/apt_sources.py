"""The Debian mirror this machine's apt is configured with.

Used to fetch pinned Debian source packages (pasta) and by the tests'
debootstrap; ``MICROAGENT_DEBIAN_MIRROR`` overrides what apt says.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MICROAGENT_DEBIAN_MIRROR"


def apt_mirror(etc_apt: Path = Path("/etc/apt")) -> str | None:
    """The first non-security Debian mirror in apt's sources (deb822 or one-line style)."""
    override = os.environ.get(ENV_VAR)
    if override:
        return override.rstrip("/")
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("URIs:") and len(line.split()) > 1 and not line.rstrip().endswith("-security"):
                return line.split()[1].rstrip("/")
    try:
        for line in (etc_apt / "sources.list").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                uri = next((p for p in parts[1:] if "://" in p), "")
                if uri and "security" not in uri:
                    return uri.rstrip("/")
    except OSError:
        pass
    return None
