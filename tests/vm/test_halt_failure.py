"""A guest that cannot go down: halt fails closed, says so, and leaves the VMM running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def ma(*args: str) -> tuple[int, dict]:
    proc = subprocess.run([MICROAGENT, *args, "--json"], capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout or "{}")


def test_halt_of_a_frozen_vm_is_failed_with_the_vmm_left_running(vm_state: Path) -> None:
    name = "frozen1"
    assert ma("create", name, "--profile", "tiny")[0] == 0
    code, doc = ma("start", name)
    assert code == 0, doc
    pid = json.loads((vm_state / "run" / name / "runtime.json").read_text())["pid"]
    try:
        os.kill(pid, signal.SIGSTOP)  # the VM can no longer run guest init's shutdown
        code, doc = ma("halt", name)
        assert code == 1 and doc["error"]["kind"] == "transient"
        assert "still running" in doc["error"]["message"] and "stop or kill" in doc["error"]["remediation"]
        status = ma("status", name)[1]
        assert status["state"] == "failed" and status["pid"] == pid
        assert Path(f"/proc/{pid}").exists()  # no silent escalation
    finally:
        os.kill(pid, signal.SIGCONT)
        ma("kill", name)
        ma("delete", "-f", name)
    assert not (vm_state / "run" / name).exists()
