"""The egress policy on the Hyper-V backend: the backend against FakeHcs (a recording fake,
NOT HCS), and its real helper process serving the proxy.

The helper test runs ``python -m microagent.supervisors.hyperv.helper`` with ``--guest
unix:PATH`` (in place of the Hyper-V socket) against the real guest init in agent mode,
which listens for the proxy on this host's loopback, as the egress tests do for the
QEMU/Firecracker helper (tests/egress/test_egress_proxy_agent.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent.conftest import agent_binary  # noqa: F401 - fixture, used by name

from egress.test_egress_proxy_agent import make_rig, wait_audit  # noqa: F401 - fixture, used by name
from egress.upstream import http_upstream
from hyperv.test_lifecycle import env, seed  # noqa: F401 - fixtures, used by name
from microagent.errors import Unsupported

EGRESS = {"allowHosts": ["pypi.org:443", "localhost"], "allowCidrs": ["127.0.0.0/8"]}


def test_start_hands_the_policy_to_the_guest_and_the_helper(env) -> None:  # noqa: F811
    backend, hcs, helpers, req, state = env
    resp = backend.start(req("start", network={"mode": "isolated", "egress": EGRESS}))
    assert resp.ok, resp
    run = state / "run" / "ws1"
    config = json.loads((run / "config.disk").read_bytes().rstrip(b"\0"))
    assert config["proxy"] == {"port": 3128}
    assert "HTTPS_PROXY=http://127.0.0.1:3128" in config["env"] and "NO_PROXY=localhost,127.0.0.1" in config["env"]
    assert json.loads((run / "egress.json").read_text()) == EGRESS
    argv = helpers.spawned[0]
    assert argv[argv.index("-m") + 1] == "microagent.supervisors.hyperv.helper"
    assert argv[argv.index("--egress-policy") + 1] == str(run / "egress.json")
    assert argv[argv.index("--egress-workspace") + 1] == "ws1" and argv[argv.index("--egress-port") + 1] == "3128"
    assert backend.kill(req("kill")).event.state == "stopped"


def test_without_egress_the_helper_has_no_proxy(env) -> None:  # noqa: F811
    backend, hcs, helpers, req, state = env
    backend.start(req("start"))
    assert "--egress-policy" not in helpers.spawned[0]
    assert "proxy" not in json.loads((state / "run" / "ws1" / "config.disk").read_bytes().rstrip(b"\0"))
    backend.kill(req("kill"))


def test_secrets_are_refused_before_anything(env) -> None:  # noqa: F811
    backend, hcs, helpers, req, state = env
    secret = {"name": "API_KEY", "placeholder": "microagent-secret-" + "0" * 32, "hosts": ["api.test"]}
    with pytest.raises(Unsupported, match="cannot hand egress secrets") as info:
        backend.start(req("start", network={"mode": "isolated", "egress": {**EGRESS, "secrets": [secret]}}))
    assert "drop --secret" in info.value.remediation
    assert hcs.calls == [] and helpers.spawned == []
    assert not (state / "run" / "ws1" / "egress.json").exists()


def test_the_hyperv_helper_serves_the_proxy(make_rig) -> None:  # noqa: F811
    with http_upstream() as up:
        port = up.server_address[1]
        rig = make_rig([f"localhost:{port}"], ["127.0.0.0/8"], module="microagent.supervisors.hyperv.helper")
        ok = rig.request(f"GET http://localhost:{port}/hv HTTP/1.1\r\n\r\n".encode())
        assert ok.startswith(b"HTTP/1.0 200") and b"upstream saw /hv" in ok, ok
        refused = rig.request(b"GET http://localhost:1/hv HTTP/1.1\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 403") and b"port 1 of localhost" in refused, refused
        assert len(up.requests) == 1
    assert sorted(r["decision"] for r in wait_audit(rig, 2)) == ["allowed", "refused"]
    assert not (Path(rig.tmp) / "secrets.sock").exists()  # no vault on this backend


def test_egress_set_refuses_secrets_for_a_hyperv_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the manifest changes (the store's lock and manifest are all it reaches)."""
    import contextlib
    import types

    from microagent.egress.secrets import parse_options
    from microagent.egress.policy import EgressPolicy
    from microagent.workspace.egress import set_policy

    manifest = types.SimpleNamespace(network="isolated", backend="windows-hyperv", egress=None)
    store = types.SimpleNamespace(lock=lambda name, why: contextlib.nullcontext(), manifest=lambda name: manifest)
    monkeypatch.setenv("API_KEY", "v")
    policy = EgressPolicy((), (), parse_options(["API_KEY"], ["API_KEY=api.test"]))
    with pytest.raises(Unsupported, match="cannot hand egress secrets"):
        set_policy(store, "ws1", policy, allowlist=False, secrets=True)
