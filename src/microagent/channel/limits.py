"""Host-side bounds on what a guest (or a channel client) can make the host hold or wait for.

One place for every default, so the docs (docs/security.md, docs/sdk.md)
and the code agree. Kept free of imports: the CLI reads it at option time.
"""

from __future__ import annotations

DEFAULT_OUTPUT_LIMIT = 16 << 20
"""Bytes of each collected output stream (stdout, stderr) the SDK and
``exec --json`` keep by default; the rest is discarded and flagged truncated."""

DEFAULT_GET_MAX = 16 << 20
"""Largest guest file :func:`~microagent.channel.files.get_bytes` reads into memory by default."""

IDLE_TIMEOUT_S = 60.0
"""Seconds a file copy may see no progress (no data, no credit, no answer) before it fails."""

START_TIMEOUT_S = 60.0
"""Seconds an exec may wait for the guest to report the process started."""

EXIT_GRACE_S = 30.0
"""With a guest-side exec timeout, how long past it the host still waits for the guest's EXIT."""

WRITE_STALL_TIMEOUT_S = 60.0
"""Seconds a channel write may make no progress (the peer stopped reading) before the connection fails."""

MAX_QUEUED_CONTROLS = 64
"""CONTROL frames a session may hold unconsumed; a guest that sends more breaks the protocol."""

MAX_QUEUED_CONTROL_BYTES = 1 << 20
"""Payload bytes of unconsumed CONTROL frames a session may hold."""
