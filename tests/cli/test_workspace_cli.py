"""Workspace commands: JSON envelopes for errors that need no VM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(state: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([MICROAGENT, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "MICROAGENT_STATE_DIR": str(state), "HOME": str(state)})
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"not one JSON document: {proc.stdout!r} {proc.stderr!r}")
    assert doc["schemaVersion"] == 1
    return proc.returncode, doc


def _error(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    assert doc["ok"] is False, doc
    assert doc["error"]["kind"] == kind, doc
    assert doc["error"]["message"] and doc["error"]["message"][0].islower()
    return doc["error"]


@pytest.mark.parametrize("name", ["../x", "a/b", "-dash", ".hidden", "x" * 64])
def test_create_with_a_bad_name_is_refused(tmp_path: Path, name: str) -> None:
    code, doc = cli(tmp_path, "create", "--json", "--", name) if name.startswith("-") else \
        cli(tmp_path, "create", "--json", name)
    err = _error(doc, "permanent")
    assert code == 2 and "is not a safe name" in err["message"]
    assert not (tmp_path / "workspaces").exists()


def test_unknown_profile_lists_the_choices(tmp_path: Path) -> None:
    code, doc = cli(tmp_path, "create", "--json", "ws1", "--profile", "huge")
    err = _error(doc, "permanent")
    assert code == 2 and "unknown profile 'huge'" in err["message"]
    assert "tiny, small, medium, large" in err["remediation"]
    assert not (tmp_path / "workspaces").exists()


def test_unknown_network_mode(tmp_path: Path) -> None:
    code, doc = cli(tmp_path, "create", "--json", "ws1", "--network", "bridged")
    assert code == 2 and "unknown network mode 'bridged'" in _error(doc, "permanent")["message"]
    assert not (tmp_path / "workspaces" / "ws1").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--network", "isolated", "-p", "8080:80"], "cannot be used with network mode isolated"),
    (["--network", "user", "-p", "8080:80/udp"], "udp is not supported"),
    (["--network", "user", "-p", "80"], "expected [HOST_IP:]HOST_PORT:GUEST_PORT"),
    (["--network", "user", "-p", "localhost:8080:80"], "is not an IP address"),
    (["--network", "user", "-p", "8080:80", "-p", "8080:81"], "published twice"),
])
def test_bad_publish_specs_are_refused_before_anything(tmp_path: Path, args: list[str], fragment: str) -> None:
    code, doc = cli(tmp_path, "create", "--json", "ws1", *args)
    assert code == 2 and fragment in _error(doc, "permanent")["message"]
    assert not (tmp_path / "workspaces" / "ws1").exists()


@pytest.mark.parametrize("command", ["status", "start", "halt", "stop", "kill", "quarantine", "wait",
                                     "logs", "events"])
def test_missing_workspace_is_not_found(tmp_path: Path, command: str) -> None:
    code, doc = cli(tmp_path, command, "--json", "ghost")
    err = _error(doc, "not_found")
    assert code == 1 and "workspace ghost does not exist" in err["message"]
    assert "microagent create ghost" in err["remediation"]


def test_exec_on_a_missing_workspace_exits_125(tmp_path: Path) -> None:
    code, doc = cli(tmp_path, "exec", "--json", "ghost", "--", "true")
    assert code == 125
    _error(doc, "not_found")


def test_delete_of_a_missing_workspace_is_ok(tmp_path: Path) -> None:
    code, doc = cli(tmp_path, "delete", "--json", "ghost")
    assert code == 0 and doc["ok"] is True
    assert doc["deleted"] is False and doc["name"] == "ghost"
    code, doc = cli(tmp_path, "delete", "-f", "--json", "ghost")
    assert code == 0 and doc["deleted"] is False
    assert not (tmp_path / "locks" / "ghost.lock").exists()


def test_list_and_ps_when_empty(tmp_path: Path) -> None:
    for command in ("list", "ls", "ps"):
        code, doc = cli(tmp_path, command, "--json")
        assert code == 0 and doc == {"schemaVersion": 1, "ok": True, "workspaces": []}


def test_connect_interactive_refuses_json(tmp_path: Path) -> None:
    code, doc = cli(tmp_path, "connect", "--json", "ws1")
    assert code == 2 and "interactive" in _error(doc, "permanent")["message"]


def test_cp_needs_exactly_one_workspace_side(tmp_path: Path) -> None:
    code, doc = cli(tmp_path, "cp", "--json", "a.txt", "b.txt")
    assert code == 2 and "NAME:/path" in _error(doc, "permanent")["message"]
    code, doc = cli(tmp_path, "cp", "--json", "ws:/a", "ws:/b")
    _error(doc, "permanent")
