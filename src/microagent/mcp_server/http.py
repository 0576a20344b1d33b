"""Streamable HTTP behind a bearer token.

Every HTTP request must carry ``Authorization: Bearer <token>``, on loopback
too: any local user can reach 127.0.0.1, and these tools run commands in VMs.
The token comes from ``--token-file`` or ``MICROAGENT_MCP_TOKEN``; without
one a random token is generated (and printed once, on stderr), which is
allowed only on a loopback address: a wider bind needs a token the operator chose.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any

from microagent.errors import Permanent, PolicyDenied

TOKEN_ENV = "MICROAGENT_MCP_TOKEN"
DEFAULT_HOST = "127.0.0.1"
MIN_TOKEN_CHARS = 16


def parse_listen(spec: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT`` (host default 127.0.0.1).

    :raises Permanent: for anything else.
    """
    host, sep, port = spec.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, spec
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Permanent(f"--http {spec!r}: port must be a number from 1 to 65535",
                        "give PORT or HOST:PORT, e.g. 127.0.0.1:8765")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise Permanent(f"--http {spec!r}: {host!r} is not an IP address",
                            "give an address to bind, e.g. 127.0.0.1 or 0.0.0.0") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def configured_token(token_file: str | None) -> str | None:
    """The operator's token: the first line of ``token_file``, else ``$MICROAGENT_MCP_TOKEN``.

    :raises Permanent: an unreadable file, or a token shorter than 16 characters.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise Permanent(f"cannot read token file {token_file}: {exc.strerror}",
                            "give a readable file holding the token on its first line") from exc
        where = f"token file {token_file}"
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
        where = f"${TOKEN_ENV}"
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise Permanent(f"the token in {where} is shorter than {MIN_TOKEN_CHARS} characters or has spaces",
                        "use a long random token, e.g. from 'openssl rand -hex 32'")
    return token


def resolve_token(host: str, token_file: str | None) -> tuple[str, bool]:
    """The token to require and whether it was generated here.

    :raises PolicyDenied: a non-loopback bind without an operator-chosen token.
    """
    token = configured_token(token_file)
    if token is not None:
        return token, False
    if not is_loopback(host):
        raise PolicyDenied(f"refusing to serve MCP on {host} without a chosen token",
                           f"give --token-file FILE or set {TOKEN_ENV}, or bind 127.0.0.1")
    return secrets.token_urlsafe(32), True


class BearerAuth:
    """ASGI middleware: 401 unless the request carries the bearer token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="microagent"')]})
                await send({"type": "http.response.body",
                            "body": b'{"error":"missing or wrong bearer token"}'})
                return
        await self.app(scope, receive, send)


def app(server: Any, host: str, token: str) -> Any:
    """The ASGI app: the SDK's streamable HTTP app at ``/mcp``, behind the token."""
    return BearerAuth(server.streamable_http_app(host=host), token)


async def serve(server: Any, host: str, port: int, token: str) -> None:
    import uvicorn

    config = uvicorn.Config(app(server, host, token), host=host, port=port, log_level="warning",
                            lifespan="on")
    await uvicorn.Server(config).serve()
