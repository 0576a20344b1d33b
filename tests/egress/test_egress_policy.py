"""The allowlist, the ClientHello reader and the audit log, without a guest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egress.upstream import client_hello
from microagent.egress import sni
from microagent.egress.audit import AuditLog, follow, read_records
from microagent.egress.options import policy_from_options
from microagent.egress.policy import EgressPolicy, proxy_env
from microagent.errors import InvalidRequest


def test_hosts_match_exactly_or_by_suffix() -> None:
    policy = EgressPolicy.parse(["API.Example.com.", ".pypi.org"])
    assert policy.allow_hosts == ("api.example.com", ".pypi.org")
    assert policy.host_allowed("api.example.com")
    assert not policy.host_allowed("example.com") and not policy.host_allowed("evilapi.example.com")
    assert policy.host_allowed("files.pypi.org") and not policy.host_allowed("pypi.org")
    assert not policy.host_allowed("notpypi.org")


def test_an_entry_with_a_port_allows_only_that_port() -> None:
    policy = EgressPolicy.parse(["pypi.org:443", ".pythonhosted.org:443", "api.test", "[::1]:8080", "::2",
                                 "10.0.0.1:22", "PyPI.org.:80"])
    assert policy.allow_hosts == ("pypi.org:443", ".pythonhosted.org:443", "api.test", "[::1]:8080", "::2",
                                  "10.0.0.1:22", "pypi.org:80")
    assert policy.host_allowed("pypi.org", 443) and policy.host_allowed("pypi.org", 80)
    assert not policy.host_allowed("pypi.org", 22) and policy.host_allowed("pypi.org")
    assert policy.refusal("pypi.org", 22) == "port 22 of pypi.org is not on the egress allowlist (allowed: 443, 80)"
    assert policy.host_allowed("files.pythonhosted.org", 443)
    assert not policy.host_allowed("files.pythonhosted.org", 80)
    # a bare host keeps meaning every port (as before ports existed)
    assert policy.host_allowed("api.test", 80) and policy.host_allowed("api.test", 6379)
    assert policy.host_allowed("::1", 8080) and not policy.host_allowed("::1", 80)
    assert policy.host_allowed("::2", 1) and policy.host_allowed("10.0.0.1", 22)
    assert policy.refusal("other.test", 443) == "other.test is not on the egress allowlist"
    assert EgressPolicy.from_wire(policy.to_wire()) == policy  # the wire form is the same strings


@pytest.mark.parametrize("entry, message", [
    ("pypi.org:0", "is not a port"), ("pypi.org:65536", "is not a port"), ("pypi.org:", "is not a port"),
    ("pypi.org:https", "is not a port"), ("pypi.org:-1", "is not a port"), ("[::1]:x", "is not a port"),
    ("bad host:443", "is not a host name"), (":443", "is not a host name"),
    ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + ":65535", "longer than 254")])
def test_malformed_ports_are_clear_errors(entry: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        EgressPolicy.parse([entry])
    assert info.value.remediation


def test_a_secret_host_takes_no_port_and_opens_every_port_of_its_host() -> None:
    from microagent.egress.secrets import parse_options

    with pytest.raises(InvalidRequest, match="is not a host name"):
        parse_options(["K=@env:HOME"], ["K=api.test:443"])
    [binding] = parse_options(["K=@env:HOME"], ["K=api.test"])
    policy = EgressPolicy(("api.test:443",), (), (binding,))
    assert policy.host_allowed("api.test", 8443)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "224.0.0.1", "0.0.0.0", "::1", "fd00::1", "fe80::1",
                                     "ff02::1", "::ffff:10.0.0.1", "64:ff9b::a00:1"])
def test_non_public_addresses_are_refused_unless_a_cidr_allows_them(address: str) -> None:
    assert EgressPolicy().address_refusal(address) is not None
    cidr = "::/0" if ":" in address and "ffff" not in address else "0.0.0.0/0"
    assert EgressPolicy.parse([], [cidr]).address_refusal(address) is None


def test_public_addresses_pass() -> None:
    assert EgressPolicy().address_refusal("93.184.216.34") is None
    assert EgressPolicy().address_refusal("2606:2800:220:1:248:1893:25c8:1946") is None


@pytest.mark.parametrize("hosts, cidrs, message", [
    (["bad host"], [], "is not a host name"), (["-x.com"], [], "is not a host name"),
    (["a" * 64 + ".com"], [], "is not a host name"), ([], ["10.0.0.1/8"], "host bits set"),
    ([], ["10.0.0.0/33"], "is not a CIDR"), ([], ["nonsense"], "is not a CIDR")])
def test_malformed_entries_are_clear_errors(hosts: list[str], cidrs: list[str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        EgressPolicy.parse(hosts, cidrs)
    assert info.value.remediation


def test_options_refuse_a_nic_and_mixed_deny_all() -> None:
    assert policy_from_options("isolated") is None
    assert policy_from_options("isolated", deny_all=True) == EgressPolicy()
    with pytest.raises(InvalidRequest, match="--network nat"):
        policy_from_options("nat", ["a.com"])
    with pytest.raises(InvalidRequest, match="cannot be combined"):
        policy_from_options("isolated", ["a.com"], deny_all=True)


def test_proxy_env_covers_both_spellings() -> None:
    env = dict(e.split("=", 1) for e in proxy_env())
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == "localhost,127.0.0.1"


def test_sni_is_read_from_a_real_client_hello_even_split_over_records() -> None:
    hello = client_hello("api.example.com")
    assert sni.server_name(hello) == "api.example.com"
    assert sni.handshake_needed(hello[:3]) == 2 and sni.handshake_needed(hello[:50]) > 0
    # The same handshake message cut into two TLS records.
    body = hello[5:]
    split = b"".join(b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part for part in (body[:40], body[40:]))
    assert sni.handshake_needed(split) == 0 and sni.server_name(split) == "api.example.com"
    with pytest.raises(sni.NotClientHello):
        sni.server_name(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(sni.NotClientHello):
        sni.server_name(hello[:5] + b"\x02" + hello[6:])  # a ServerHello


def test_audit_log_is_private_bounded_and_followed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "egress.log", "ws", cap=2000)
    log.write(host="before.test", port=80, decision="refused")
    follower = follow(tmp_path, poll_s=0.01)  # from here on
    for i in range(3):
        log.write(host=f"h{i}.test", port=80, decision="allowed", bytesSent=1, bytesReceived=2)
    assert [next(follower)["host"] for _ in range(3)] == ["h0.test", "h1.test", "h2.test"]
    assert (tmp_path / "egress.log").stat().st_mode & 0o777 == 0o600
    for i in range(100):
        log.write(host=f"h{i}.test", port=80, decision="refused", reason="x" * 20)
    assert (tmp_path / "egress.log").stat().st_size <= 2000
    assert (tmp_path / "egress.log.1").stat().st_size <= 2000
    assert (tmp_path / "egress.log.1").stat().st_mode & 0o777 == 0o600
    records = read_records(tmp_path)
    assert records[-1]["host"] == "h99.test" and records[-1]["workspace"] == "ws"
    assert json.loads((tmp_path / "egress.log").read_text().splitlines()[-1])["decision"] == "refused"
