"""``microagent connect NAME`` driven for real through a pseudo-terminal (pexpect)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def _json(*args: str) -> dict:
    proc = subprocess.run([MICROAGENT, *args, "--json"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_interactive_connect_runs_a_command_and_detaches(vm_state: Path) -> None:
    name = "pty1"
    _json("create", name, "--profile", "tiny")
    pid = _json("start", name)["pid"]
    try:
        child = pexpect.spawn(MICROAGENT, ["connect", name], timeout=30, dimensions=(30, 100))
        child.expect("Ctrl-] detaches")
        child.expect(rf"{name}:[^\r\n]*# ")  # the busybox prompt: '\h:\w\$ '
        child.sendline("echo $((6*7)); stty size")
        child.expect(r"42\r\n30 100\r\n")
        child.expect(rf"{name}:[^\r\n]*# ")
        child.send("\x1d")  # Ctrl-]
        child.expect("detached from pty1; it is still running")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        status = _json("status", name)
        assert status["state"] == "running" and status["pid"] == pid
        # the detached shell is gone, the guest still answers
        proc = subprocess.run([MICROAGENT, "exec", name, "--", "echo", "alive"], capture_output=True, timeout=60)
        assert proc.stdout == b"alive\n"

        # exiting the shell ends connect with the shell's status
        child = pexpect.spawn(MICROAGENT, ["connect", name], timeout=30)
        child.expect(rf"{name}:[^\r\n]*# ")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 3

        # exec -it: a real terminal in the guest sized like the local one; -i alone: stdin without a pty
        child = pexpect.spawn(MICROAGENT, ["exec", "-it", name, "--", "sh", "-c", "tty; stty size; read x; echo got-$x"],
                              timeout=30, dimensions=(40, 120))
        child.expect(r"/dev/pts/\d+\r\n40 120\r\n")
        child.sendline("abc")
        child.expect("got-abc")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        proc = subprocess.run([MICROAGENT, "exec", "-i", name, "--", "tr", "a-z", "A-Z"], input=b"piped\n",
                              capture_output=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout == b"PIPED\n"
    finally:
        subprocess.run([MICROAGENT, "delete", "-f", name], capture_output=True, timeout=120)
    assert not (vm_state / "run" / name).exists()
