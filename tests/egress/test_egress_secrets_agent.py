"""Secrets through the real helper process and the real guest init in agent mode (see
test_egress_proxy_agent.py): placeholders replaced toward bound hosts, refused toward others,
and the HTTPS broker, against upstream servers on this machine's loopback."""

from __future__ import annotations

from pathlib import Path

from egress.test_egress_proxy_agent import wait_audit
from egress.upstream import http_upstream, make_tls_certs
from microagent.egress.secrets import new_placeholder
from microagent.egress.vault import supply

VALUE = "real-value-7f3a9c"
PLACEHOLDER = new_placeholder()
SECRETS = [{"name": "API_KEY", "placeholder": PLACEHOLDER, "hosts": ["localhost"]}]


def test_placeholder_is_replaced_toward_the_bound_host_and_refused_elsewhere(make_rig, tmp_path: Path) -> None:
    with http_upstream() as up:
        port = up.server_address[1]
        rig = make_rig(["127.0.0.1"], ["127.0.0.0/8"], secrets=SECRETS)
        supply(rig.tmp, {"API_KEY": VALUE})
        answer = rig.request(f"GET http://localhost:{port}/q?k={PLACEHOLDER} HTTP/1.1\r\n"
                             f"Authorization: Bearer {PLACEHOLDER}\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.0 200"), answer
        assert up.requests[0]["Authorization"] == f"Bearer {VALUE}"
        # the request line is not a header: left as it was; the answer is never rewritten
        assert f"upstream saw /q?k={PLACEHOLDER}".encode() in answer and VALUE.encode() not in answer

        refused = rig.request(f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n"
                              f"Authorization: Bearer {PLACEHOLDER}\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 403"), refused
        assert b"placeholder of secret API_KEY, which is not bound to 127.0.0.1" in refused
        tunnel = rig.request(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nX-Key: {PLACEHOLDER}\r\n\r\n".encode())
        assert tunnel.startswith(b"HTTP/1.1 403"), tunnel
        assert len(up.requests) == 1
    # a record is written when its connection has ended on the host: in any order
    records = sorted(wait_audit(rig, 3), key=lambda r: str(r["decision"]))
    assert [(r["host"], r["decision"]) for r in records] == [
        ("localhost", "allowed"), ("127.0.0.1", "refused"), ("127.0.0.1", "refused")]
    assert records[0]["secrets"] == ["API_KEY"]
    assert all("not bound to 127.0.0.1" in str(r["reason"]) for r in records[1:])
    assert VALUE not in (rig.tmp / "egress.log").read_text() + rig.router_log()


def test_the_broker_makes_the_https_call_with_the_value(make_rig, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, chain, key = make_tls_certs(certs, ["localhost"])
    with http_upstream(tls=(chain, key)) as up:
        port = up.server_address[1]
        rig = make_rig(["127.0.0.1"], ["127.0.0.0/8"], secrets=SECRETS, env={"SSL_CERT_FILE": str(ca)})
        supply(rig.tmp, {"API_KEY": VALUE})
        body = f'{{"key": "{PLACEHOLDER}"}}'
        answer = rig.request(f"POST /https/localhost:{port}/v1/chat HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n"
                             f"x-api-key: {PLACEHOLDER}\r\nContent-Length: {len(body)}\r\n"
                             f"Expect: 100-continue\r\n\r\n{body}".encode())
        assert answer.startswith(b"HTTP/1.0 200"), answer
        assert f"upstream saw /v1/chat host=localhost:{port}".encode() in answer
        seen = up.requests[0]
        assert seen["x-api-key"] == VALUE and seen["X-Body"] == body  # headers only: the body is as sent

        # an allowed host the secret is not bound to: refused before any call
        wrong = rig.request(f"GET /https/127.0.0.1:{port}/ HTTP/1.1\r\nX-Key: {PLACEHOLDER}\r\n\r\n".encode())
        assert wrong.startswith(b"HTTP/1.1 403") and b"not bound to 127.0.0.1" in wrong, wrong
        # a certificate that does not name the host: no request goes up
        mismatch = rig.request(f"GET /https/127.0.0.1:{port}/ HTTP/1.1\r\n\r\n".encode())
        assert mismatch.startswith(b"HTTP/1.1 502") and b"TLS to 127.0.0.1" in mismatch, mismatch
        chunked = rig.request(b"POST /https/localhost/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert chunked.startswith(b"HTTP/1.1 400") and b"Content-Length" in chunked, chunked
        twice = rig.request(f"POST /https/localhost:{port}/ HTTP/1.1\r\nContent-Length: 1\r\n"
                            f"Content-Length: 2\r\n\r\nab".encode())
        assert twice.startswith(b"HTTP/1.1 400"), twice
        assert len(up.requests) == 1
    records = wait_audit(rig, 5)
    assert sorted((str(r["host"]), r["decision"], r.get("broker")) for r in records) == [
        ("127.0.0.1", "refused", True), ("127.0.0.1", "refused", True), ("None", "refused", None),
        ("localhost", "allowed", True), ("localhost", "refused", True)]
    [allowed] = [r for r in records if r["decision"] == "allowed"]
    assert allowed["bytesReceived"] == len(answer) and allowed["secrets"] == ["API_KEY"]


def test_the_broker_refuses_an_upstream_the_host_does_not_trust(make_rig, tmp_path: Path) -> None:
    ca, chain, key = make_tls_certs(tmp_path, ["localhost"])
    with http_upstream(tls=(chain, key)) as up:
        rig = make_rig([], ["127.0.0.0/8"], secrets=SECRETS)  # no SSL_CERT_FILE: the system store
        supply(rig.tmp, {"API_KEY": VALUE})
        answer = rig.request(f"GET /https/localhost:{up.server_address[1]}/ HTTP/1.1\r\n"
                             f"X-Key: {PLACEHOLDER}\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 502") and b"CERTIFICATE_VERIFY_FAILED" in answer, answer
        assert up.requests == []


def test_a_secret_the_helper_was_not_given_is_refused_with_the_remedy(make_rig) -> None:
    with http_upstream() as up:
        rig = make_rig([], ["127.0.0.0/8"], secrets=SECRETS)
        supply(rig.tmp, {"OTHER": "x"})  # a helper given values, but not this one
        answer = rig.request(f"GET http://localhost:{up.server_address[1]}/ HTTP/1.1\r\n"
                             f"Authorization: {PLACEHOLDER}\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 403"), answer
        assert b"no value for secret API_KEY" in answer and b"egress set" in answer
        assert up.requests == []
