"""``run --arch aarch64``: a one-shot aarch64 guest under TCG (one boot), and the
refusals that cost no boot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([MICROAGENT, "run", "--json", *args], capture_output=True, timeout=300, check=False)


@pytest.mark.slow
@pytest.mark.vm
def test_run_reports_aarch64(a64_state: Path) -> None:
    proc = run("--arch", "arm64", "--boot-timeout", "240", "builtin:busybox", "--", "sh", "-c",
               "uname -m; cat /proc/cpuinfo | grep -c '^processor'")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["result"]["stdout"].split() == ["aarch64", "1"], doc


def test_unknown_arch_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    proc = run("--state-dir", str(tmp_path), "--arch", "riscv64", "builtin:busybox", "--", "true")
    doc = json.loads(proc.stdout)
    assert proc.returncode != 0 and "riscv64" in doc["error"]["message"] and doc["error"]["remediation"]
    assert not (tmp_path / "images").exists()


def test_a_missing_aarch64_kernel_names_the_install_command(tmp_path: Path) -> None:
    proc = run("--state-dir", str(tmp_path), "--backend", "qemu", "--arch", "aarch64", "builtin:busybox", "--", "true")
    doc = json.loads(proc.stdout)
    assert "--arch aarch64" in doc["error"]["remediation"], doc
