"""Spec files: validation errors name the file, the line and the key; the schema does not drift."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from microagent.errors import InvalidRequest, NotFound
from microagent.workspace.spec import (Spec, create_kwargs, load_spec, parse_spec, render_schema, spec_name)

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "microagent.schema.json"

FULL = """\
name: web
image: builtin:busybox
profile: small
memory: 256
cpus: 1
disk-size: 1024
env:
  GREETING: hello
  PORT: 8080
network: isolated
egress:
  allow: [pypi.org, .pythonhosted.org]
setup:
  - apk add git
  - echo done
service: httpd -f -p 8080
restart: on-failure
"""


def error_of(text: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        parse_spec(text, "ws.yaml")
    return err.value


def test_a_full_spec_becomes_create_arguments() -> None:
    spec = parse_spec(FULL)
    kw = create_kwargs(spec)
    assert kw["env"] == ("GREETING=hello", "PORT=8080")
    assert kw["setup"] == ("apk add git", "echo done") and kw["service"] == "httpd -f -p 8080"
    assert (kw["memory_mib"], kw["cpus"], kw["disk_size_mib"], kw["restart"]) == (256, 1, 1024, "on-failure")
    assert kw["egress"].to_wire()["allowHosts"] == ["pypi.org", ".pythonhosted.org"]
    assert parse_spec("env: [A=b, C=]\n").env_list() == ("A=b", "C=")
    assert parse_spec("image: x\n").name is None
    vols = parse_spec("volumes: [cache:/cache:ro, /srv/src:/src]\n")
    assert create_kwargs(vols)["volumes"] == ("cache:/cache:ro", "/srv/src:/src")


@pytest.mark.parametrize(("text", "line", "words"), [
    ("image: x\nsetup:\n  - ok\nbogus: 1\n", 4, "unknown field 'bogus'"),
    ("image: x\negress:\n  allow: [a]\n  allows: [b]\n", 4, "egress has unknown field 'allows'"),
    ("image: x\n\nmemory: 10\n", 3, "memory must be between 64 and"),
    ("setup:\n  - fine\n  - [not, a, string]\n", 3, "setup[1] must be a string"),
    ("restart: sometimes\n", 1, "restart must be one of always, never, on-failure"),
    ("env:\n  - NOEQUALS\n", 2, "env[0] must look like KEY=VALUE"),
    ("env:\n  A: x\n  B: true\n", 2, "env values must be strings or numbers"),
    ("image: a\ncpus: 1\nimage: b\n", 3, "image is given twice (first on line 1)"),
    ("image: [\n", 2, "not valid YAML"),
    ("- a list\n", 1, "a spec is a mapping"),
    ("name: bad/name\n", 1, "is not a safe name"),
    ("service: ''\n", 1, "service must not be empty"),
])
def test_errors_name_the_line_and_the_key(text: str, line: int, words: str) -> None:
    err = error_of(text)
    assert err.message.startswith(f"ws.yaml:{line}: "), err.message
    assert words in err.message, err.message


def test_unknown_top_level_keys_list_the_known_ones() -> None:
    err = error_of("volume: [a]\n")
    assert "disk-size" in err.remediation and "setup" in err.remediation


def test_files_too_large_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_spec(tmp_path / "none.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(InvalidRequest, match="is empty"):
        load_spec(tmp_path / "empty.yaml")
    (tmp_path / "big.yaml").write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(InvalidRequest, match="larger than 1 MiB"):
        load_spec(tmp_path / "big.yaml")


def test_the_name_comes_from_the_command_line_or_the_spec_and_they_agree() -> None:
    spec = parse_spec("name: a\n")
    assert spec_name(spec, None, "f") == "a" and spec_name(spec, "a", "f") == "a"
    with pytest.raises(InvalidRequest, match="names workspace b but f names a"):
        spec_name(spec, "b", "f")
    with pytest.raises(InvalidRequest, match="has no name"):
        spec_name(parse_spec("image: x\n"), None, "f")


def test_checked_in_schema_matches_the_struct() -> None:
    assert SCHEMA.read_text() == render_schema(), (
        "docs/microagent.schema.json is stale: regenerate it with "
        "'python -m microagent.workspace.spec > docs/microagent.schema.json'")


# YAML's own line breaks (NEL, LS, PS) do not survive PyYAML's dump; they are not the parser's to test
_cmd = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x85\u2028\u2029"),
               min_size=1, max_size=40).filter(str.strip)
_specs = st.fixed_dictionaries({}, optional={
    "image": _cmd, "memory": st.integers(64, 4096), "cpus": st.integers(1, 64),
    "env": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), _cmd, max_size=4),
    "setup": st.lists(_cmd, max_size=4), "service": _cmd,
    "restart": st.sampled_from(["never", "on-failure", "always"]),
    "network": st.sampled_from(["isolated", "user", "nat"]),
    "publish": st.lists(st.from_regex(r"[1-9][0-9]{0,3}:[1-9][0-9]{0,3}", fullmatch=True), max_size=2)})


@settings(max_examples=150, deadline=None)
@given(_specs)
def test_any_valid_spec_written_as_yaml_parses_back_to_the_same(doc: dict) -> None:
    spec = parse_spec(yaml.safe_dump(doc, allow_unicode=True))
    assert msgspec.to_builtins(spec) == msgspec.to_builtins(msgspec.convert(doc, Spec))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_spec_or_an_invalid_request(text: str) -> None:
    try:
        parse_spec(text)
    except InvalidRequest as exc:
        assert exc.message.startswith("microagent.yaml")
