"""The real microagent-hyperv-supervisor executable on this (Linux) host: unsupported, naming Linux."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).parent / "microagent-hyperv-supervisor"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks the foreign-host answer on Linux")
@pytest.mark.parametrize("request_doc", [
    {"command": "host"},
    {"command": "start", "identity": {"requestID": "r", "runtimeID": "ws1", "role": "workload",
                                      "backend": "windows-hyperv"},
     "config": {"stateDir": "/tmp/x", "kernelPath": "/k", "rootfsPath": "/r"}},
    {"command": "kill", "identity": {"requestID": "r", "runtimeID": "ws1", "role": "workload",
                                     "backend": "windows-hyperv"}, "config": {"stateDir": "/tmp/x"}},
])
def test_unsupported_on_linux(request_doc) -> None:
    exe = str(EXE) if EXE.exists() else shutil.which("microagent-hyperv-supervisor")
    assert exe, "microagent-hyperv-supervisor is not installed in the venv"
    proc = subprocess.run([exe], input=json.dumps(request_doc), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["ok"] is False and answer["backend"] == "windows-hyperv"
    assert answer["error"]["kind"] == "unsupported"
    assert "Windows" in answer["error"]["message"] and "Linux" in answer["error"]["message"]
    assert "Traceback" not in proc.stderr
    assert "ctypes" not in proc.stderr


def test_importing_the_backend_loads_no_dll() -> None:
    code = ("import microagent.supervisors.hyperv.backend as b, microagent.supervisors.hyperv.hcs as h; "
            "c = h.ComputeCore(); assert c._libs == {}; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "ok", out.stderr
