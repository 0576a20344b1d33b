"""The real ``microagent`` CLI against one state root, and ways to kill it mid-command
(used by tests/faults)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from support import vmm_processes

MICROAGENT = str(Path(sys.executable).parent / "microagent")


class Faults:
    """The real CLI against one state root, plus ways to kill it mid-command."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {**os.environ, "MICROAGENT_STATE_DIR": str(root), "MICROAGENT_BACKEND": "qemu"}

    def run(self, *args: str, timeout: float = 120) -> tuple[int, dict[str, Any]]:
        proc = subprocess.run([MICROAGENT, *args, "--json"], capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        assert "Traceback" not in proc.stderr, proc.stderr
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            pytest.fail(f"{args}: not one JSON document: {proc.stdout!r} {proc.stderr!r}")

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([MICROAGENT, *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)

    def kill_when(self, proc: subprocess.Popen[str], ready: Callable[[], bool], limit_s: float = 60) -> bool:
        """SIGKILL ``proc`` (the CLI only, like ``kill -9 PID``) as soon as ``ready()``;
        then wait until every process it had started has finished on its own.

        :returns: whether ``ready()`` came true before the CLI ended by itself.
        """
        deadline = time.monotonic() + limit_s
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.wait()
                return False
            time.sleep(0.005)
        children = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait_gone(children, limit_s)
        return True

    def names(self) -> list[str]:
        code, doc = self.run("list")
        assert code == 0, doc
        return [w["name"] for w in doc["workspaces"]]

    def check_reconciled(self, name: str) -> dict[str, Any]:
        """``status`` and ``list`` agree with each other and with the process table."""
        code, listed = self.run("list")
        assert code == 0, listed
        rows = {w["name"]: w for w in listed["workspaces"]}
        if name not in rows:
            code, doc = self.run("status", name)
            assert code == 1 and doc["error"]["kind"] == "not_found", doc
            assert vmm_processes(str(self.root / "run" / name)) == []
            return {}
        code, status = self.run("status", name)
        assert code == 0, status
        assert status["state"] == rows[name]["state"], (status, rows[name])
        live = vmm_processes(str(self.root / "run" / name))
        if status["alive"]:
            assert status["pid"] and any(line.split()[0] == str(status["pid"]) for line in live), (status, live)
        else:
            assert not any("qemu-system" in line for line in live), (status, live)
            assert status["state"] not in ("running", "starting"), status
        return status

    def check_clean(self) -> None:
        """Nothing of any workspace is left: no process, no staging, no runtime, no lock."""
        assert vmm_processes(str(self.root)) == []
        ws = self.root / "workspaces"
        assert not ws.exists() or sorted(p.name for p in ws.iterdir()) == []
        run = self.root / "run"
        assert not run.exists() or sorted(p.name for p in run.iterdir()) == []
        locks = self.root / "locks"
        assert not locks.exists() or sorted(p.name for p in locks.iterdir()) == []


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout.split("\n")[1:]
    children: dict[int, list[int]] = {}
    for line in out:
        parts = line.split()
        if len(parts) == 2:
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_gone(pids: list[int], limit_s: float) -> None:
    """Wait for the short-lived helpers a killed CLI had started (a supervisor call, a
    disk copy); a detached VMM or channel helper is the workspace's, not the CLI's."""
    deadline = time.monotonic() + limit_s
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in args or b"microagent.channel.router" in args:
            continue
        while time.monotonic() < deadline:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                break
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.02)
