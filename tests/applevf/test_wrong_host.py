"""The real ``microagent-applevf-supervisor`` executable on this (Linux) host.

Every command answers ``ok:false``, kind ``unsupported``, naming the host OS,
exit status 1 — never an ImportError or a traceback — and nothing from
PyObjC or the apple-vf implementation is imported to say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from microagent.vmkit.types import COMMANDS

SUPERVISOR = str(Path(sys.executable).parent / "microagent-applevf-supervisor")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks the Linux answer")


def _request(command: str, tmp_path: Path) -> dict[str, object]:
    raw: dict[str, object] = {"command": command}
    if command != "host":
        raw["identity"] = {"requestID": "r", "runtimeID": "ws1", "role": "workload", "backend": "apple-vf"}
        raw["config"] = {"stateDir": str(tmp_path), "kernelPath": "/k", "rootfsPath": "/r"}
    if command == "snapshot":  # a well-formed request, so the answer is about the host
        raw["snapshot"] = {"path": str(tmp_path / "snap")}
    return raw


def test_every_command_is_unsupported_naming_linux(tmp_path: Path) -> None:
    for command in sorted(COMMANDS):
        done = subprocess.run([SUPERVISOR, "--request-json", json.dumps(_request(command, tmp_path))],
                              capture_output=True, text=True, timeout=30)
        answer = json.loads(done.stdout)
        assert done.returncode == 1, command
        assert answer["ok"] is False and answer["backend"] == "apple-vf"
        assert answer["error"]["kind"] == "unsupported", (command, answer)
        assert answer["error"]["message"] == "the apple-vf supervisor needs a macOS host; this host runs Linux"
        assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_wrong_host_imports_nothing_of_the_implementation() -> None:
    code = ("import sys, io, contextlib\n"
            "from microagent.supervisors.applevf import main\n"
            "from microagent.supervisors.base import serve\n"
            "sys.stdin = io.StringIO('{\"command\": \"host\"}')\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    serve(main._factory, 'apple-vf', [])\n"
            "bad = [m for m in sys.modules if m.startswith(('Virtualization', 'objc', 'Foundation'))"
            " or m.startswith('microagent.supervisors.applevf.') and m != 'microagent.supervisors.applevf.main']\n"
            "print(bad)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
