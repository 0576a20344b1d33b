"""Every supervisor executable speaks the JSON protocol (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SUPERVISORS = {
    "firecracker": "microagent-firecracker-supervisor",
    "qemu": "microagent-qemu-supervisor",
    "apple-vf": "microagent-applevf-supervisor",
    "windows-hyperv": "microagent-hyperv-supervisor",
}


def call(name: str, *args: str, stdin: str = "") -> tuple[int, dict]:
    proc = subprocess.run([str(BIN / name), *args], input=stdin, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("backend", ["firecracker", "qemu"])
def test_linux_supervisors_answer_host(backend: str) -> None:
    code, doc = call(SUPERVISORS[backend], stdin='{"command":"host"}')
    assert code == 0 and doc["ok"] is True and doc["backend"] == backend
    assert doc["host"]["os"] == "linux" and doc["host"]["architecture"]
    assert doc["host"]["kvmKind"] in ("hardware", "paravirtual", "absent", "unusable")


@pytest.mark.parametrize(("backend", "needs"), [("apple-vf", "macOS"), ("windows-hyperv", "Windows")])
@pytest.mark.parametrize("command", ["host", "check", "start", "delete"])
def test_foreign_supervisors_refuse_every_command(backend: str, needs: str, command: str) -> None:
    request = {"command": command}
    if command != "host":
        request["identity"] = {"requestID": "r", "runtimeID": "w", "role": "workload", "backend": backend}
        request["config"] = {"stateDir": "/tmp/x", "kernelPath": "/k", "rootfsPath": "/r"}
    code, doc = call(SUPERVISORS[backend], stdin=json.dumps(request))
    assert code == 1 and doc["ok"] is False
    assert doc["error"]["kind"] == "unsupported"
    assert needs in doc["error"]["message"] and "Linux" in doc["error"]["message"]


def test_request_file_and_json_flags(tmp_path: Path) -> None:
    f = tmp_path / "req.json"
    f.write_text('{"command":"host"}')
    assert call(SUPERVISORS["qemu"], "--request", str(f))[0] == 0
    assert call(SUPERVISORS["qemu"], "--request-json", '{"command":"host"}')[0] == 0


@pytest.mark.parametrize(
    ("stdin", "fragment"),
    [
        ("not json", "request is not valid JSON"),
        ('{"command":"boot"}', "unknown command 'boot'"),
        ('{"command":"check","identity":{"requestID":"r","runtimeID":"w","role":"workload","backend":"firecracker"},'
         '"config":{"stateDir":"/tmp/x","kernelPath":"/k","rootfsPath":"/r"}}', "this is the qemu supervisor"),
    ],
)
def test_bad_requests_fail_closed(stdin: str, fragment: str) -> None:
    code, doc = call(SUPERVISORS["qemu"], stdin=stdin)
    assert code == 1 and doc["error"]["kind"] == "permanent" and fragment in doc["error"]["message"]


def test_check_names_missing_kernel(tmp_path: Path) -> None:
    request = {"command": "check",
               "identity": {"requestID": "r", "runtimeID": "w", "role": "workload", "backend": "qemu"},
               "config": {"stateDir": str(tmp_path), "kernelPath": str(tmp_path / "Image"),
                          "rootfsPath": str(tmp_path / "rootfs.ext4")}}
    code, doc = call(SUPERVISORS["qemu"], stdin=json.dumps(request))
    assert code == 1 and doc["error"]["kind"] == "not_found" and "kernel" in doc["error"]["message"]


def test_lifecycle_on_unknown_workspace_is_a_conflict(tmp_path: Path) -> None:
    request = {"command": "stop",
               "identity": {"requestID": "r", "runtimeID": "ghost", "role": "workload", "backend": "qemu"},
               "config": {"stateDir": str(tmp_path)}}
    code, doc = call(SUPERVISORS["qemu"], stdin=json.dumps(request))
    assert code == 1 and doc["error"]["kind"] == "conflict" and "not running" in doc["error"]["message"]
