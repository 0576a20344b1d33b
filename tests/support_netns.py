"""Network namespaces the tests make, and servers inside them: no test packet leaves them.

:class:`Netns` is one namespace; :func:`host_and_world` makes two joined by a
veth, ``host`` (where microagent runs) at :data:`HOST_ADDRESS` and ``world``
(the internet, as far as a guest can tell) at :data:`WORLD_ADDRESS`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

HOST_ADDRESS, WORLD_ADDRESS = "198.51.100.1", "198.51.100.2"  # TEST-NET-2

#: an HTTP server on ARGV[1]:ARGV[2] answering "hello from CLIENT" and printing CLIENT per request;
#: a thread per connection, so one stuck peer blocks no other
HTTP_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + self.client_address[0]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
        print(self.client_address[0], flush=True)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""

_GET = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


class Netns:
    """A network namespace named ``PREFIX-<random>``, its loopback up."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")

    def run(self, *argv: str, timeout: float = 240, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})

    def spawn(self, code: str, *args: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
        """``python -c CODE ARGS...`` in here."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", code, *args],
                                stdout=stdout, text=True)

    def serve(self, address: str, port: int, code: str = HTTP_SERVER, *,
              stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
        """A server (``code`` run with ADDRESS PORT), once it accepts connections."""
        proc = self.spawn(code, address, str(port), stdout=stdout)
        target = "127.0.0.1" if address == "0.0.0.0" else address
        probe = f"import socket; socket.create_connection(('{target}', {port}), 1)"
        for _ in range(100):
            if self.run(sys.executable, "-c", probe).returncode == 0:
                return proc
            time.sleep(0.05)
        proc.kill()
        raise RuntimeError("test server did not start")

    def get(self, url: str) -> str:
        """The body at ``url``, fetched from in here."""
        proc = self.run(sys.executable, "-c", _GET, url, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


@contextlib.contextmanager
def host_and_world(prefix: str, *, route: bool = True, forward: bool = True) -> Iterator[tuple[Netns, Netns, str]]:
    """``host`` and ``world`` namespaces joined by a veth; yields them and world's end of it.

    ``route``: host's default route leads to world (pasta copies a routable
    interface); ``forward``: host forwards packets (``ip_forward=1``, as NAT needs).
    """
    host, world = Netns(f"{prefix}h"), Netns(f"{prefix}w")
    try:
        veth = f"{prefix}{uuid.uuid4().hex[:6]}"
        sh("ip", "link", "add", veth + "a", "netns", host.name, "type", "veth", "peer", veth + "b",
           "netns", world.name)
        sh("ip", "-n", host.name, "addr", "add", f"{HOST_ADDRESS}/24", "dev", veth + "a")
        sh("ip", "-n", host.name, "link", "set", veth + "a", "up")
        sh("ip", "-n", world.name, "addr", "add", f"{WORLD_ADDRESS}/24", "dev", veth + "b")
        sh("ip", "-n", world.name, "link", "set", veth + "b", "up")
        if route:
            sh("ip", "-n", host.name, "route", "add", "default", "via", WORLD_ADDRESS)
        if forward:
            host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield host, world, veth + "b"
    finally:
        host.delete()
        world.delete()
