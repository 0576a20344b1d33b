"""An upstream for the secrets VM test: records each request's headers, answers without echoing them.

``python record_server.py PORT LOG [CERT KEY]`` (HTTPS with CERT and KEY): one JSON line per
request in LOG (``path`` and ``headers``); the answer is ``recorded`` so no header value can
reach the guest through it.
"""

from __future__ import annotations

import http.server
import json
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        with open(sys.argv[2], "a") as log:
            log.write(json.dumps({"path": self.path, "headers": dict(self.headers.items())}) + "\n")
        body = b"recorded\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    if len(sys.argv) > 3:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
