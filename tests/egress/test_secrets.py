"""Secret options, sources, header substitution and the helper's vault, without a guest."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microagent.egress.options import policy_from_options, to_config
from microagent.egress.policy import EgressPolicy
from microagent.egress.secrets import (
    PLACEHOLDER_RE,
    SecretBinding,
    SecretRefused,
    parse_options,
    read_values,
    rewrite_head,
)
from microagent.egress.vault import Vault, serve, supply
from microagent.errors import InvalidRequest, Transient

VALUE = b"s3cr3t-value-0123"


def _binding(name: str = "API_KEY", hosts: tuple[str, ...] = ("api.test",)) -> SecretBinding:
    return parse_options([name], [f"{name}={h}" for h in hosts])[0]


def test_sources_and_hosts_are_parsed_with_a_fresh_placeholder(tmp_path: Path) -> None:
    a, b, c = parse_options(["A", "B=@env:OTHER", "C=@file:key.txt"],
                            ["A=API.test.", "A=.suffix.test", "B=b.test", "C=c.test", "A=api.test"], cwd=tmp_path)
    assert (a.name, a.source, a.hosts) == ("A", "env:A", ("api.test", ".suffix.test"))
    assert (b.source, c.source) == ("env:OTHER", f"file:{tmp_path / 'key.txt'}")
    assert all(PLACEHOLDER_RE.fullmatch(x.placeholder.encode()) for x in (a, b, c))
    assert len({a.placeholder, b.placeholder, c.placeholder}) == 3
    assert a.bound_to("api.test") and a.bound_to("x.suffix.test") and not a.bound_to("suffix.test")
    assert parse_options(["A"], ["A=a.test"])[0].placeholder != parse_options(["A"], ["A=a.test"])[0].placeholder


@pytest.mark.parametrize("secrets, hosts, message", [
    (["1BAD"], ["1BAD=a.test"], "not a valid name"),
    (["A-B"], [], "not a valid name"),
    (["A=literal-value"], ["A=a.test"], "must be @env:VAR or @file:PATH"),
    (["A=@env:"], ["A=a.test"], "must be @env:VAR or @file:PATH"),
    (["A", "A"], ["A=a.test"], "given twice"),
    (["A"], [], "bound to no host"),
    (["A"], ["B=b.test"], "names no --secret B"),
    (["A"], ["A"], "is not NAME=HOST"),
    (["A"], ["A=bad host"], "is not a host name"),
])
def test_bad_options_are_clear_errors(secrets: list[str], hosts: list[str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        parse_options(secrets, hosts)
    assert info.value.remediation
    assert "literal-value" not in str(info.value) + str(info.value.remediation)


def test_values_come_from_env_or_file_and_bad_ones_are_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("from-file\n")
    a, b = parse_options(["A", "B=@file:" + str(key)], ["A=a.test", "B=b.test"])
    assert read_values([a, b], {"A": "from-env"}) == {"A": "from-env", "B": "from-file"}
    with pytest.raises(InvalidRequest, match="environment variable A is not set"):
        read_values([a], {})
    for content, message in ((b"", "empty"), (b"two\nlines", "control characters"), (b"\xff\xfe", "not UTF-8"),
                             (b"x" * 20000, "larger than")):
        key.write_bytes(content)
        with pytest.raises(InvalidRequest, match=message):
            read_values([b], {})
    key.unlink()
    with pytest.raises(InvalidRequest, match="is not a regular file"):
        read_values([b], {})
    key.write_text("v")
    key.chmod(0)
    if os.geteuid() != 0:  # root reads it anyway
        with pytest.raises(InvalidRequest, match="cannot read"):
            read_values([b], {})


def test_options_make_an_egress_policy_whose_wire_form_has_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", VALUE.decode())
    policy = policy_from_options("isolated", secrets=["API_KEY"], secret_hosts=["API_KEY=api.test"])
    assert policy is not None and policy.allow_hosts == ()
    assert policy.host_allowed("api.test") and not policy.host_allowed("other.test")
    wire = policy.to_wire()
    assert VALUE.decode() not in json.dumps(wire)
    assert wire["secrets"][0]["source"] == "env:API_KEY"
    assert EgressPolicy.from_wire(wire) == policy
    assert to_config(wire).secrets[0].placeholder == policy.secrets[0].placeholder
    with pytest.raises(InvalidRequest, match="--network user"):
        policy_from_options("user", secrets=["API_KEY"], secret_hosts=["API_KEY=api.test"])
    monkeypatch.delenv("API_KEY")
    with pytest.raises(InvalidRequest, match="API_KEY is not set"):
        policy_from_options("isolated", secrets=["API_KEY"], secret_hosts=["API_KEY=api.test"])


def _head(placeholder: str, extra: str = "") -> bytes:
    return (f"GET /x?q={placeholder} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {placeholder}\r\n"
            f"X-Both: {placeholder}:{placeholder}{extra}\r\n\r\n").encode()


def test_placeholders_become_values_in_headers_toward_bound_hosts_only() -> None:
    b = _binding()
    out = rewrite_head(_head(b.placeholder), "api.test", [b], lambda _: VALUE)
    line, _, headers = out.partition(b"\r\n")
    assert b.placeholder.encode() in line and VALUE not in line  # the request line is never rewritten
    assert headers.count(VALUE) == 3 and b.placeholder.encode() not in headers
    with pytest.raises(SecretRefused, match="secret API_KEY, which is not bound to other.test"):
        rewrite_head(_head(b.placeholder), "other.test", [b], lambda _: VALUE)
    with pytest.raises(SecretRefused, match="not one of this workspace's secrets"):
        rewrite_head(_head("microagent-secret-" + "0" * 32), "api.test", [b], lambda _: VALUE)
    with pytest.raises(SecretRefused, match="no value for secret API_KEY"):
        rewrite_head(_head(b.placeholder), "api.test", [b], lambda _: None)
    tunnel = rewrite_head(_head(b.placeholder), "api.test", [b], lambda _: VALUE, substitute=False)
    assert VALUE not in tunnel
    plain = b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n"
    assert rewrite_head(plain, "elsewhere.test", [b], lambda _: VALUE) == plain


_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.tuples(_header_text, st.booleans()), max_size=8), host=st.sampled_from(
    ["api.test", "x.api.test", "other.test", "api.test.evil"]))
def test_the_value_goes_to_bound_hosts_only_whatever_the_headers(pieces: list[tuple[str, bool]], host: str) -> None:
    a, b = _binding("A", ("api.test",)), _binding("B", (".api.test",))
    lines = [f"X-{i}: {text}{a.placeholder if use else ''}" for i, (text, use) in enumerate(pieces)]
    head = ("GET / HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
    carries = any(use for _, use in pieces)
    try:
        out = rewrite_head(head, host, [a, b], lambda binding: VALUE if binding is a else b"other-value")
    except SecretRefused:
        assert carries and host != "api.test"
        return
    assert host == "api.test" or not carries
    assert (VALUE in out) == carries
    assert a.placeholder.encode() not in out
    assert b"other-value" not in out


def test_vault_takes_values_over_its_socket_and_never_gives_them_back(tmp_path: Path) -> None:
    vault = Vault(wait_s=5.0)
    sock = serve(tmp_path / "secrets.sock", vault)
    try:
        assert oct((tmp_path / "secrets.sock").stat().st_mode & 0o777) == "0o600"
        got: list[bytes | None] = []
        waiter = threading.Thread(target=lambda: got.append(vault.value("A")))
        waiter.start()  # before the first supply: it waits
        time.sleep(0.1)
        assert supply(tmp_path, {"A": VALUE.decode()}, "ws") == ["A"]
        waiter.join(5)
        assert got == [VALUE]
        assert supply(tmp_path, {"B": "b"}) == ["A", "B"]  # merged
        started = time.monotonic()
        assert vault.value("C") is None and time.monotonic() - started < 1  # supplied once: no wait
        with pytest.raises(InvalidRequest, match="refused the secrets: secret A: the value holds|control"):
            supply(tmp_path, {"A": "line\nbreak"})
        assert vault.value("A") == VALUE
    finally:
        sock.close()
    with pytest.raises(Transient, match="cannot hand the secrets"):
        supply(tmp_path / "nowhere", {"A": "x"}, "ws")


def test_a_vault_never_supplied_refuses_after_its_first_seconds() -> None:
    vault = Vault(wait_s=0.2)
    started = time.monotonic()
    assert vault.value("A") is None
    assert 0.1 < time.monotonic() - started < 2
    started = time.monotonic()
    assert vault.value("A") is None and time.monotonic() - started < 0.1
