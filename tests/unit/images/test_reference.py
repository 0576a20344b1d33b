"""Reference parsing and normalisation (Docker's rules), with hypothesis."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microagent.errors import Permanent
from microagent.images.reference import (
    ArchiveReference,
    BuiltinReference,
    ImageReference,
    LayoutReference,
    normalize,
    parse_image_reference,
    parse_reference,
)

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("ref, want", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ("user/app", "docker.io/user/app:latest"),
    ("python:3.13-slim", "docker.io/library/python:3.13-slim"),
    ("localhost/x", "localhost/x:latest"),
    ("localhost:5000/x/y:tag", "localhost:5000/x/y:tag"),
    ("127.0.0.1:5000/a/b@" + D, "127.0.0.1:5000/a/b@" + D),
    ("ghcr.io/org/team/app:v1.2.3", "ghcr.io/org/team/app:v1.2.3"),
    ("GHCR.io/org/app", "ghcr.io/org/app:latest"),
    ("busybox:1@" + D, "docker.io/library/busybox:1@" + D),
    ("[::1]:5000/x", "[::1]:5000/x:latest"),
    ("a_b__c/d-e--f.g", "docker.io/a_b__c/d-e--f.g:latest"),
])
def test_normalise(ref: str, want: str) -> None:
    assert normalize(ref) == want


def test_parts() -> None:
    r = parse_image_reference("busybox")
    assert (r.registry, r.repository, r.tag, r.digest) == ("docker.io", "library/busybox", "latest", None)
    assert r.api_host == "registry-1.docker.io" and r.lookup == "latest"
    r = parse_image_reference("127.0.0.1:5000/a/b@" + D)
    assert (r.host, r.api_host, r.tag, r.lookup) == ("127.0.0.1", "127.0.0.1:5000", None, D)
    r = parse_image_reference("x:1@" + D)
    assert r.tag == "1" and r.lookup == D  # the digest wins
    assert parse_image_reference("[::1]:5000/x").host == "::1"


@pytest.mark.parametrize("ref, why", [
    ("", "empty"),
    (" busybox", "whitespace"),
    ("Busybox", "lowercase"),
    ("busybox:", "malformed tag"),
    ("busybox:-x", "malformed tag"),
    ("busybox@sha256:abc", "malformed digest"),
    ("busybox@md5:" + "a" * 32, "unsupported digest"),
    ("a//b", "malformed repository"),
    ("-a/b", "malformed repository"),
    ("a/b_", "malformed repository"),
    ("host:port/x", "malformed registry"),
    ("x" * 300, "longer than"),
    (":tag", "no repository"),
])
def test_invalid(ref: str, why: str) -> None:
    with pytest.raises(Permanent) as err:
        normalize(ref)
    assert why in err.value.message and repr(ref) in err.value.message
    assert err.value.kind == "permanent" and err.value.remediation


def test_other_sources(tmp_path: Path) -> None:
    assert parse_reference("oci:/tmp/lay:v1") == LayoutReference(Path("/tmp/lay"), "v1")
    assert parse_reference("oci:/tmp/lay") == LayoutReference(Path("/tmp/lay"), None)
    existing = tmp_path / "with:colon"
    existing.mkdir()
    assert parse_reference(f"oci:{existing}") == LayoutReference(existing, None)
    a = parse_reference("docker-archive:/tmp/a.tar:me/app:1")
    assert a == ArchiveReference(Path("/tmp/a.tar"), parse_image_reference("me/app:1"))
    assert str(a) == "docker-archive:/tmp/a.tar:docker.io/me/app:1"
    assert parse_reference("docker-archive:/tmp/a.tar") == ArchiveReference(Path("/tmp/a.tar"), None)
    assert parse_reference("builtin:busybox") == BuiltinReference("busybox")
    rel = parse_reference("oci:rel/dir:t")
    assert isinstance(rel, LayoutReference) and rel.path.is_absolute()
    for bad in ("oci:", "docker-archive:", "builtin:", "builtin:Bad Name", "docker-archive:/a.tar:x@" + D):
        with pytest.raises(Permanent):
            parse_reference(bad)


# -- properties -------------------------------------------------------------------

component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
hosts = st.one_of(
    st.just(None),
    st.from_regex(r"[a-z][a-z0-9]{0,8}\.[a-z]{2,5}", fullmatch=True),
    st.builds(lambda p: f"127.0.0.1:{p}", st.integers(1, 65535)),
    st.builds(lambda p: f"localhost:{p}", st.integers(1, 65535)),
)
tags = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
digests = st.one_of(st.none(), st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True))


@settings(max_examples=150, deadline=None)
@given(hosts, st.lists(component, min_size=1, max_size=3), tags, digests)
def test_normalised_form_is_a_fixed_point(host: str | None, path: list[str], tag: str | None,
                                          digest: str | None) -> None:
    if host is None and ("." in path[0] or len(path) == 1 and path[0] == "localhost"):
        path = ["x" + path[0].replace(".", "")] + path[1:]  # a dotted first component is a registry host
    ref = "/".join(([host] if host else []) + path)
    if tag:
        ref += f":{tag}"
    if digest:
        ref += f"@{digest}"
    parsed = parse_image_reference(ref)
    assert parse_image_reference(str(parsed)) == parsed
    assert normalize(str(parsed)) == str(parsed)
    assert parsed.tag == (tag or (None if digest else "latest"))
    assert parsed.digest == digest
    if host is None:
        assert parsed.registry == "docker.io"
        assert parsed.repository == "/".join(path) if len(path) > 1 else parsed.repository == f"library/{path[0]}"
    else:
        assert parsed.registry == host


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        parsed = parse_reference(text)
    except Permanent as err:
        assert err.message.startswith("invalid image reference")
        return
    assert isinstance(parsed, (ImageReference, LayoutReference, ArchiveReference, BuiltinReference))
    if isinstance(parsed, ImageReference):
        assert parse_image_reference(str(parsed)) == parsed
