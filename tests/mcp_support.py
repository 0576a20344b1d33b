"""Helpers for the MCP server tests (tests/mcp/): call tools in-process, read tool errors."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import Client

from microagent.mcp_server import ServerOptions, build_server


def tool_error(result: Any) -> dict[str, Any]:
    """The ``{kind, message, remediation}`` object of an error result."""
    assert result.is_error, result
    text = result.content[0].text
    return dict(json.loads(text[text.index("{"):]))


def with_client(options: ServerOptions, body: Callable[[Client, Any], Awaitable[None]]) -> Any:
    """Run ``body(client, ledger)`` against a fresh in-process server; returns the ledger."""
    server, ledger = build_server(options)

    async def main() -> None:
        async with Client(server) as client:
            await body(client, ledger)

    anyio.run(main)
    return ledger
