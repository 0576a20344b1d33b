"""The wire types' helpers that need no msgspec: safe names and timestamps.

Kept apart from :mod:`.types` so that callers on the CLI's fast paths (exec,
the workspace store) can check a name or stamp a time without importing the
wire structs; :mod:`.types` re-exports both.
"""

from __future__ import annotations

import re
import time

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def is_safe_name(name: str) -> bool:
    """A workspace/runtime name usable as a path basename and hostname stem."""
    return isinstance(name, str) and bool(SAFE_NAME.fullmatch(name))


def now_rfc3339() -> str:
    """The current time as RFC 3339 UTC with millisecond precision."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
