"""Credentials files and WWW-Authenticate parsing (the HTTP flows are in tests/images)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from microagent.errors import Permanent
from microagent.images.auth import load_credentials, parse_challenges


def test_parse_bearer_and_basic() -> None:
    [c] = parse_challenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                           'scope="repository:library/busybox:pull"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:library/busybox:pull"}
    [c] = parse_challenges('Basic realm="microagent-test"')
    assert c.scheme == "basic" and c.params["realm"] == "microagent-test"
    assert [c.scheme for c in parse_challenges('Basic realm="a", Bearer realm="b",scope="x"')] == ["basic", "bearer"]
    [c] = parse_challenges('Bearer realm="https://a/token",scope="repository:x:pull,push"')
    assert c.params["scope"] == "repository:x:pull,push"


def test_credentials_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    assert load_credentials("r.example") is None
    f = tmp_path / "home" / ".microagent" / "auth.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"auths": {
        "r.example:5000": {"auth": base64.b64encode(b"u:p:with:colons").decode()},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
    }}))
    creds = load_credentials("r.example:5000")
    assert creds is not None and (creds.username, creds.password) == ("u", "p:with:colons")
    assert "p:with" not in repr(creds)
    hub = load_credentials("docker.io")
    assert hub is not None and hub.username == "hub"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"auths": {}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(other))
    assert load_credentials("r.example:5000") is None  # the env file wins
    other.write_text("{broken")
    with pytest.raises(Permanent, match="not valid JSON"):
        load_credentials("r.example:5000")
    other.write_text(json.dumps({"auths": {"r.example:5000": {"auth": "!!!"}}}))
    with pytest.raises(Permanent, match="base64"):
        load_credentials("r.example:5000")
