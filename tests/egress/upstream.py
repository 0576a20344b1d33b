"""Upstream servers on this machine's loopback for the egress tests."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"upstream saw {self.path} host={self.headers.get('Host')}\n".encode()
        self.server.requests.append(dict(self.headers.items()))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def http_upstream(address: str = "127.0.0.1", port: int = 0) -> Iterator[http.server.ThreadingHTTPServer]:
    """A threaded HTTP server answering ``upstream saw PATH host=HOST``; ``.requests`` holds the headers."""
    server = http.server.ThreadingHTTPServer((address, port), _Handler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def echo_upstream(address: str, port: int) -> Iterator[list[bytes]]:
    """A TCP server that records the first bytes of each connection and answers ``ok``."""
    seen: list[bytes] = []
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    seen.append(conn.recv(65536))
                    conn.sendall(b"ok")
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield seen
    finally:
        sock.close()


def client_hello(server_name: str) -> bytes:
    """A real TLS ClientHello naming ``server_name`` (from the ssl module, never sent anywhere)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()
