"""Spec-file and setup/service usage errors at the CLI: exit 2 before anything is built (no VM)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd, *rest = args  # options before run's IMAGE: everything after it is the command
    return subprocess.run([MICROAGENT, cmd, "--state-dir", str(tmp_path / "state"), *rest], capture_output=True,
                          text=True, timeout=60)


def test_bad_values_in_a_spec_are_usage_errors(tmp_path: Path) -> None:
    f = tmp_path / "ws.yaml"
    f.write_text("name: w\npublish: ['8080:80']\n")
    out = cli(tmp_path, "apply", "-f", str(f))
    assert out.returncode == 2 and "isolated" in out.stderr, out.stderr
    f.write_text("name: w\nrestart: always\n")
    out = cli(tmp_path, "create", "-f", str(f))
    assert out.returncode == 2 and "needs --service" in out.stderr, out.stderr
    out = cli(tmp_path, "apply", "other", "-f", str(f))
    assert out.returncode == 2 and "names workspace other but" in out.stderr
    assert not (tmp_path / "state" / "workspaces").exists() or not any((tmp_path / "state" / "workspaces").iterdir())


def test_setup_and_service_flags_are_checked_first(tmp_path: Path) -> None:
    out = cli(tmp_path, "create", "w", "--restart", "always")
    assert out.returncode == 2 and "needs --service" in out.stderr
    out = cli(tmp_path, "run", "--setup", " ", "builtin:busybox", "--", "true")
    assert out.returncode == 2 and "setup command 1 is empty" in out.stderr
    out = cli(tmp_path, "create")
    assert out.returncode == 2 and "NAME" in out.stderr
    out = cli(tmp_path, "logs", "nope", "--service")
    assert out.returncode == 1 and "does not exist" in out.stderr
