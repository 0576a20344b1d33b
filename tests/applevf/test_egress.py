"""The egress policy on the apple-vf backend, on Linux against ``FakeVirtualization``.

The backend runs in-process, its vmhost is the real vmhost process, the fake VM's
guest is the real guest init in agent mode (it listens for the proxy on this host's
loopback, where in a VM it would listen on the guest's), and the channel helper is
the real egress helper: the proxy that decides and dials.  What this shows: apple-vf
hands the policy to guest init (config disk: proxy port and variables) and starts the
proxy in its helper, exactly as QEMU/Firecracker do.
"""

from __future__ import annotations

import json
import socket
import time

from applevf.harness import AppleVF

from egress.upstream import http_upstream


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, raw: bytes) -> bytes:
    deadline = time.monotonic() + 15
    while True:  # guest init listens once the helper's first accept session arrived
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=15)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the egress proxy never listened"
            time.sleep(0.05)
    with sock:
        sock.sendall(raw)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_apple_vf_passes_the_policy_to_the_guest_and_runs_the_proxy(applevf: AppleVF) -> None:
    proxy_port = _free_port()
    placeholder = "microagent-secret-" + "ab" * 16
    egress = {"allowHosts": ["localhost"], "allowCidrs": ["127.0.0.0/8"], "proxyPort": proxy_port,
              "secrets": [{"name": "API_KEY", "placeholder": placeholder, "hosts": ["localhost"]}]}
    with http_upstream() as up:
        started = applevf.call("start", network={"mode": "isolated", "egress": egress})
        assert started["ok"], started
        rt = applevf.runtime()
        try:
            config = json.loads((rt / "config.disk").read_bytes().rstrip(b"\0"))
            assert config["proxy"] == {"port": proxy_port}
            assert f"HTTP_PROXY=http://127.0.0.1:{proxy_port}" in config["env"]
            assert f"API_KEY={placeholder}" in config["env"]
            policy = json.loads((rt / "egress.json").read_text())
            assert policy["allowHosts"] == ["localhost"] and policy["secrets"][0]["name"] == "API_KEY"
            assert "from microagent.egress.helper import main; sys.exit(main()) --egress-policy" in _helper_cmdline(applevf)

            port = up.server_address[1]
            ok = _request(proxy_port, f"GET http://localhost:{port}/vf HTTP/1.1\r\n\r\n".encode())
            assert ok.startswith(b"HTTP/1.0 200") and b"upstream saw /vf" in ok, ok
            refused = _request(proxy_port, f"GET http://127.0.0.1:{port}/vf HTTP/1.1\r\n\r\n".encode())
            assert refused.startswith(b"HTTP/1.1 403") and b"not on the egress allowlist" in refused, refused
            assert len(up.requests) == 1
            records = [json.loads(line) for line in (rt / "egress.log").read_text().splitlines()]
            # written as each connection ends on the host: in any order
            assert sorted((r["host"], r["decision"]) for r in records) == [("127.0.0.1", "refused"),
                                                                            ("localhost", "allowed")]
        finally:
            assert applevf.call("kill")["ok"]
            assert applevf.call("delete")["ok"]


def _helper_cmdline(applevf: AppleVF) -> str:
    pid = applevf.runtime_json()["routerPid"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()
