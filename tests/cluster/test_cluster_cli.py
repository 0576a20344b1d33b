"""``--cluster`` on the command line without a cluster: clear errors, no Ray left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([MICROAGENT, *args], capture_output=True, text=True, env=env, timeout=60)


def test_an_unreachable_cluster_is_a_clear_error_with_the_remedy() -> None:
    out = run("list", "--cluster", "127.0.0.1:1")
    assert out.returncode == 1
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in out.stderr
    assert "ray start --head" in out.stderr and "Traceback" not in out.stderr


def test_require_without_cluster_and_local_only_options_with_it_are_usage_errors() -> None:
    out = run("create", "x", "--require", "kvm=1")
    assert out.returncode == 2 and "--require needs --cluster" in out.stderr
    out = run("create", "x", "--cluster", "127.0.0.1:1", "-p", "8080:80")
    assert out.returncode == 2 and "--publish: not available with --cluster" in out.stderr
    out = run("create", "x", "--cluster", "127.0.0.1:1", "--require", "gpu=1")
    assert out.returncode == 2 and "unknown capability 'gpu'" in out.stderr


def test_cluster_status_names_the_ray_extra_when_ray_is_missing(tmp_path: Path) -> None:
    # a Python that cannot import ray: a shadowing module that raises ImportError
    (tmp_path / "ray.py").write_text("raise ImportError('no ray here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([MICROAGENT, "cluster", "status"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1
    assert "pip install 'microagent[ray]'" in out.stderr
