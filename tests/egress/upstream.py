"""Upstream servers on this machine's loopback for the egress tests."""

from __future__ import annotations

import http.server
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"upstream saw {self.path} host={self.headers.get('Host')}\n".encode()
        self.server.requests.append(dict(self.headers.items()))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.headers["X-Body"] = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def http_upstream(address: str = "127.0.0.1", port: int = 0,
                  tls: tuple[Path, Path] | None = None) -> Iterator[http.server.ThreadingHTTPServer]:
    """A threaded HTTP server answering ``upstream saw PATH host=HOST``; ``.requests`` holds the headers
    (a POST's body as ``X-Body``).  ``tls``: (certificate chain, key) to serve HTTPS."""
    server = http.server.ThreadingHTTPServer((address, port), _Handler)
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
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


def make_tls_certs(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for ``names`` (DNS names) signed by it, made with openssl.

    :returns: ``(ca.pem, server chain, server key)``; trust ``ca.pem`` with ``SSL_CERT_FILE``.
    """
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=egress test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={names[0]}")
    (directory / "ext.cnf").write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n"
                                       "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                       "extendedKeyUsage=serverAuth\n"
                                       "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"
