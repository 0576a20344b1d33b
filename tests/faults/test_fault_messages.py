"""Errors after a fault name what actually happened.

- A VMM that dies before the guest answers: ``start`` quotes vmm.log (the
  VMM's own words, e.g. "Cannot allocate memory"), not just an empty serial
  tail.
- A channel helper killed under a running exec: the error says the helper
  died (the guest is fine) and the next command restarts it; it does not
  say the guest went away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from fault_support import MICROAGENT, Faults
from support import vmm_processes

FAKE_QEMU = """#!/bin/sh
# a VMM that starts, then fails the way QEMU does when the host lacks memory
case "$1" in --version) exec {real} --version ;; esac
sleep 0.5
echo "qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory" >&2
exit 1
"""


def test_start_quotes_vmm_log_when_the_vmm_dies_early(faults: Faults, tmp_path: Path) -> None:
    code, doc = faults.run("create", "ws", timeout=300)
    assert code == 0, doc
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "qemu-system-x86_64"
    fake.write_text(FAKE_QEMU.format(real="/usr/bin/qemu-system-x86_64"))
    fake.chmod(0o755)
    faults.env["PATH"] = f"{bin_dir}:{faults.env['PATH']}"
    code, doc = faults.run("start", "ws")
    assert code != 0, doc
    assert "Cannot allocate memory" in doc["error"]["message"], doc
    assert "vmm.log" in doc["error"]["remediation"], doc
    code, doc = faults.run("delete", "ws")
    assert code == 0, doc


def test_killed_helper_is_not_reported_as_the_guest_going_away(faults: Faults) -> None:
    for args in (("create", "ws"), ("start", "ws")):
        code, doc = faults.run(*args, timeout=300)
        assert code == 0, doc
    exec_ = subprocess.Popen([MICROAGENT, "exec", "ws", "--", "sleep", "30"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=faults.env)
    time.sleep(2)
    helpers = [line for line in vmm_processes(str(faults.root / "run" / "ws")) if "channel.router" in line]
    assert len(helpers) == 1, helpers
    os.kill(int(helpers[0].split()[0]), signal.SIGKILL)
    _, err = exec_.communicate(timeout=30)
    assert exec_.returncode != 0
    assert "helper" in err and "died" in err and "guest went away" not in err, err
    assert "next command" in err, err
    nxt = subprocess.run([MICROAGENT, "exec", "ws", "--", "echo", "fine"], capture_output=True, text=True,
                         env=faults.env, timeout=60)  # the next command: a new helper, the same guest
    assert nxt.returncode == 0 and nxt.stdout == "fine\n", nxt
    assert faults.run("kill", "ws")[0] == 0
    assert faults.run("delete", "ws")[0] == 0
    faults.check_clean()
