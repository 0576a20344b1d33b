"""Egress and secrets through a real Firecracker guest (the slow lane; one boot).

The same path as the QEMU tests (tests/egress/test_egress_vm.py), through the
Firecracker supervisor: the per-boot config disk carries the proxy port and the
proxy variables, guest init listens on the guest's 127.0.0.1:3128, each
connection rides the vsock channel as an ``accept`` session to the helper's
proxy, which dials an upstream on this host's loopback (opened with
``--egress-allow-cidr 127.0.0.0/8``).  The upstream records the headers it got.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import socket

import pytest

from egress.upstream import http_upstream
from firecracker_slow.slow_state import SlowState, report
from firecracker_slow.test_slow_lane import STEP_TIMEOUT_S, Steps, boot, cli_json, logs_tail

VALUE = "slowkey-" + secrets.token_hex(12)
FETCH = 'wget -q -S -O- --header "Authorization: Bearer $API_KEY" "$1" 2>&1; echo "rc=$?"'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(1200)
def test_firecracker_egress_and_secrets_through_the_slow_lane(fc_slow_state: SlowState) -> None:
    state = dataclasses.replace(fc_slow_state, env={**fc_slow_state.env, "API_KEY": VALUE})
    name, steps = "fcegress", Steps()
    port = _free_port()
    try:
        with http_upstream("127.0.0.1", port) as up:
            doc = cli_json(state, "create", name, "--backend", "firecracker", "--profile", "tiny",
                           "--egress-allow", "localhost", "--egress-allow", "127.0.0.2",
                           "--egress-allow-cidr", "127.0.0.0/8",
                           "--secret", "API_KEY", "--secret-host", "API_KEY=localhost")
            egress = doc["workspace"]["network"]["egress"]
            assert egress["allowHosts"] == ["localhost", "127.0.0.2"], egress
            placeholder = egress["secrets"][0]["placeholder"]
            assert VALUE not in json.dumps(doc)
            boot(state, name)
            steps.done("create, start with egress and a secret")

            def fetch(url: str) -> str:
                proc = state.cli("exec", name, "--", "sh", "-c", FETCH, "sh", url, timeout=STEP_TIMEOUT_S)
                return (proc.stdout + proc.stderr).decode(errors="replace")

            env = state.cli("exec", name, "--", "env", timeout=STEP_TIMEOUT_S).stdout.decode()
            assert "HTTP_PROXY=http://127.0.0.1:3128" in env and f"API_KEY={placeholder}" in env, env
            assert VALUE not in env

            # allowed and bound: through the in-guest proxy, the placeholder replaced on the host
            out = fetch(f"http://localhost:{port}/allowed")
            assert "200" in out and "upstream saw /allowed" in out and "rc=0" in out, (out, logs_tail(state, name))
            assert up.requests[-1]["Authorization"] == f"Bearer {VALUE}", up.requests
            assert VALUE not in out
            steps.done("allowed host through 127.0.0.1:3128, secret substituted")

            # an unlisted host: 403, nothing reaches the upstream
            seen = len(up.requests)
            out = fetch(f"http://127.0.0.1:{port}/unlisted")
            assert "403" in out and "rc=1" in out and len(up.requests) == seen, out
            # allowed, but the secret is not bound to it: 403 naming the secret, nothing sent
            out = fetch(f"http://127.0.0.2:{port}/unbound")
            assert "403" in out and "rc=1" in out and len(up.requests) == seen, out
            steps.done("unlisted host 403, placeholder toward an unbound host 403")

            # the guest has no other way out: no route, and no interface up but lo (this test kernel
            # also has sit0, IPv6-in-IPv4, which stays down without an address)
            net = state.cli("exec", name, "--", "sh", "-c", "tail -n +2 /proc/net/route; for i in /sys/class/net/*; "
                            "do echo ${i##*/} $(($(cat $i/flags) & 1)); done", timeout=STEP_TIMEOUT_S).stdout.decode()
            assert [line for line in net.splitlines() if line.endswith(" 1")] == ["lo 1"], net
            assert all(line.split()[0] in ("lo", "sit0") for line in net.splitlines()), net

            records = [json.loads(line) for line in
                       state.cli("egress", "log", name, "--json").stdout.decode().splitlines()]
            by_host = {r["host"]: r for r in records}  # written as each connection ends: in any order
            assert len(records) == 3 and {h: r["decision"] for h, r in by_host.items()} == {
                "localhost": "allowed", "127.0.0.1": "refused", "127.0.0.2": "refused"}, records
            assert by_host["localhost"]["secrets"] == ["API_KEY"]
            assert "not on the egress allowlist" in by_host["127.0.0.1"]["reason"]
            assert "API_KEY" in by_host["127.0.0.2"]["reason"]
            runtime = state.root / "run" / name
            for path in [*runtime.rglob("*"), *(state.root / "workspaces").rglob("*")]:
                if path.is_file() and path.stat().st_size < 64 * 1024 * 1024:
                    assert VALUE.encode() not in path.read_bytes(), path
            steps.done("audit log, the value in no state file")

            assert cli_json(state, "kill", name)["state"] == "stopped"
            assert cli_json(state, "delete", name)["deleted"] is True
            steps.done("kill, delete")
    finally:
        report(f"firecracker slow lane, egress: {steps.total():.0f}s in all; "
               + ", ".join(f"{what} {secs:.0f}s" for what, secs in steps.rows))
        state.cli("kill", name)
        state.cli("delete", name)
