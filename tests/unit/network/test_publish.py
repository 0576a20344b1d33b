"""Publish specs parse like Docker's, and bad ones are refused with a clear message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microagent.errors import InvalidRequest
from microagent.network.publish import check_network, parse_publish
from microagent.vmkit.types import PortForward


@pytest.mark.parametrize(("spec", "want"), [
    ("8080:80", PortForward(8080, 80, "127.0.0.1")),
    ("0.0.0.0:8080:80/tcp", PortForward(8080, 80, "0.0.0.0")),
    ("[::1]:8080:80", PortForward(8080, 80, "::1")),
])
def test_valid_specs(spec: str, want: PortForward) -> None:
    assert parse_publish(spec) == want


@pytest.mark.parametrize(("spec", "fragment"), [
    ("8080:80/udp", "udp is not supported"),
    ("8080:80/sctp", "unknown protocol"),
    ("80", "expected [HOST_IP:]HOST_PORT:GUEST_PORT"),
    ("host:8080:80", "is not an IP address"),
    ("0:80", "must be a number from 1 to 65535"),
    ("8080:99999", "must be a number from 1 to 65535"),
    ("[::1:8080:80", "unclosed"),
])
def test_invalid_specs(spec: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_publish(spec)
    assert fragment in info.value.message and info.value.message[0].islower()


@given(st.text(max_size=40))
def test_any_text_parses_or_is_refused_cleanly(spec: str) -> None:
    try:
        p = parse_publish(spec)
    except InvalidRequest:
        return
    assert 1 <= p.hostPort <= 65535 and 1 <= p.guestPort <= 65535


def test_isolated_refuses_publish_and_duplicates_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="network mode isolated"):
        check_network("isolated", (PortForward(1, 2),))
    with pytest.raises(InvalidRequest, match="published twice"):
        check_network("user", (PortForward(1, 2), PortForward(1, 3)))
    check_network("nat", (PortForward(1, 2), PortForward(1, 2, "::1")))
