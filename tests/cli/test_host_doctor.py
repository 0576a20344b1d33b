"""``microagent host`` and ``doctor`` on this very host, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MICROAGENT, *args], capture_output=True, text=True, timeout=120, env=env)


def test_host_json_explains_the_backend(tmp_path: Path) -> None:
    proc = cli("host", "--json", "--state-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["backend"] in ("qemu", "firecracker")
    if Path("/sys/module/kvm_pvm").exists():
        assert doc["backend"] == "qemu"
        assert "paravirtual" in doc["reason"]
    assert doc["kernel"]["status"] == "missing"  # fresh state dir


def test_doctor_fails_on_missing_kernel_with_remediation(tmp_path: Path) -> None:
    proc = cli("doctor", "--json", "--state-dir", str(tmp_path))
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["verdict"] == "failed" and doc["ok"] is False
    kernel = next(c for c in doc["checks"] if c["name"] == "kernel")
    assert not kernel["ok"] and "microagent kernel install" in kernel["remediation"]
    assert all(c["remediation"] for c in doc["checks"] if not c["ok"])


def test_doctor_text_names_failed_checks(tmp_path: Path) -> None:
    proc = cli("doctor", "--state-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "[FAIL] kernel" in proc.stdout and "fix: run 'microagent kernel install" in proc.stdout


def test_foreign_backend_is_refused_before_anything(tmp_path: Path) -> None:
    proc = cli("run", "--json", "--state-dir", str(tmp_path), "--backend", "apple-vf", "builtin:busybox", "true")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 125
    assert doc["error"]["kind"] == "unsupported"
    assert "macOS" in doc["error"]["message"] and "Linux" in doc["error"]["message"]
    assert "firecracker, qemu" in doc["error"]["remediation"]
    assert list(tmp_path.iterdir()) == []  # nothing was built


def test_text_errors_have_no_traceback(tmp_path: Path) -> None:
    proc = cli("run", "--state-dir", str(tmp_path), "--backend", "windows-hyperv", "builtin:busybox", "true")
    assert proc.returncode == 125
    assert proc.stderr.startswith("microagent: backend windows-hyperv needs a Windows host")
    assert "Traceback" not in proc.stderr


def test_unknown_image_is_refused_before_boot(tmp_path: Path) -> None:
    proc = cli("run", "--json", "--state-dir", str(tmp_path), "--backend", "qemu", "builtin:nope", "true")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 125 and doc["error"]["kind"] == "not_found"
    assert "builtin:busybox" in doc["error"]["remediation"]


def test_usage_error_exit_code() -> None:
    assert cli("run").returncode == 2
