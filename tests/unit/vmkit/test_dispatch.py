"""Supervisor lookup order and the stdin/stdout JSON contract, with real executables."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from microagent.errors import Conflict, NotFound, Permanent
from microagent.vmkit import dispatch
from microagent.vmkit.dispatch import call_supervisor, find_supervisor


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_override_wins_then_env(tmp_path: Path) -> None:
    a = _script(tmp_path / "a", "")
    b = _script(tmp_path / "b", "")
    env = {"MICROAGENT_QEMU_SUPERVISOR": str(b), "PATH": ""}
    assert find_supervisor("qemu", str(a), env) == a
    assert find_supervisor("qemu", None, env) == b


def test_missing_override_or_env_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        find_supervisor("qemu", str(tmp_path / "nope"), {})
    with pytest.raises(NotFound, match="MICROAGENT_FIRECRACKER_SUPERVISOR"):
        find_supervisor("firecracker", None, {"MICROAGENT_FIRECRACKER_SUPERVISOR": str(tmp_path / "x")})


def test_beside_cli_then_prefix_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli_dir = tmp_path / "cli"
    cli_dir.mkdir()
    beside = _script(cli_dir / "microagent-qemu-supervisor", "")
    monkeypatch.setattr(sys, "argv", [str(cli_dir / "microagent")])
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert find_supervisor("qemu", None, {"PATH": ""}) == beside
    beside.unlink()
    libexec = tmp_path / "prefix" / "libexec"
    libexec.mkdir(parents=True)
    in_libexec = _script(libexec / "microagent-qemu-supervisor", "")
    assert find_supervisor("qemu", None, {"PATH": ""}) == in_libexec
    in_libexec.unlink()
    on_path = tmp_path / "onpath"
    on_path.mkdir()
    p = _script(on_path / "microagent-qemu-supervisor", "")
    assert find_supervisor("qemu", None, {"PATH": str(on_path)}) == p
    p.unlink()
    with pytest.raises(NotFound, match="was not found"):
        find_supervisor("qemu", None, {"PATH": str(on_path)})


def test_failure_response_is_decoded_and_raised_by_kind(tmp_path: Path) -> None:
    exe = _script(tmp_path / "sup", """
import json, sys
req = json.load(sys.stdin)
print(json.dumps({"ok": False, "backend": "qemu", "error": {"kind": "conflict", "message": "busy " + req["command"]}}))
sys.exit(1)""")
    with pytest.raises(Conflict, match="busy host"):
        call_supervisor(exe, {"command": "host"})


def test_garbage_output_is_a_permanent_error_with_stderr(tmp_path: Path) -> None:
    exe = _script(tmp_path / "sup", "import sys; print('not json'); print('boom', file=sys.stderr); sys.exit(3)")
    with pytest.raises(Permanent, match="exited 3 without a valid response: boom"):
        call_supervisor(exe, {"command": "host"})


def test_exit_status_must_match_ok(tmp_path: Path) -> None:
    exe = _script(tmp_path / "sup", "print('{\"ok\": true, \"backend\": \"qemu\"}'); raise SystemExit(1)")
    with pytest.raises(Permanent, match="but answered ok=True"):
        call_supervisor(exe, {"command": "host"})


def test_env_names_cover_every_backend() -> None:
    assert set(dispatch.ENV_NAMES) == set(dispatch.SUPERVISOR_NAMES)
    assert all(v.startswith("MICROAGENT_") for v in dispatch.ENV_NAMES.values())
    assert os.sep not in "".join(dispatch.SUPERVISOR_NAMES.values())
