"""microagent errors as MCP tool errors.

The SDK shows the agent the message of its ``ToolError`` only (any other
exception becomes a bare "Error executing tool"), so every
:class:`~microagent.errors.MicroagentError` is re-raised as one whose message
is the ``error`` object of ``--json``: ``{"kind", "message", "remediation"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from mcp.server.mcpserver.exceptions import ToolError

from microagent.errors import MicroagentError


def tool_error(exc: MicroagentError) -> ToolError:
    doc = {"kind": exc.kind, "message": exc.message, "remediation": exc.remediation or None}
    return ToolError(json.dumps(doc, ensure_ascii=False))


@contextmanager
def as_tool_errors() -> Iterator[None]:
    try:
        yield
    except MicroagentError as exc:
        raise tool_error(exc) from exc
