"""Bad input on the command line: one exit code (2), one message per mistake, nothing built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from microagent.paths import host_arch, kernel_dir, state_root
from microagent.workspace.profiles import host_cpus, host_memory_mib

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(state: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run([MICROAGENT, *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "MICROAGENT_STATE_DIR": str(state),
                               "HOME": str(state)})
    assert "Traceback" not in proc.stderr, proc.stderr
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"not one JSON document: {proc.stdout!r} {proc.stderr!r}")
    return proc.returncode, doc, proc.stderr


def _nothing_built(state: Path) -> None:
    assert not (state / "workspaces").exists() or not any((state / "workspaces").iterdir())
    assert not (state / "run").exists() or not any((state / "run").iterdir())
    assert not (state / "locks").exists() or not any((state / "locks").iterdir())


@pytest.mark.parametrize("memory", ["10", "0", "-5", str(1 << 20), str(host_memory_mib() + 1)])
def test_bad_memory_is_the_same_usage_error_for_run_and_create(tmp_path: Path, memory: str) -> None:
    c_code, c_doc, _ = cli(tmp_path, "create", "--json", "--memory", memory, "ws1")
    r_code, r_doc, _ = cli(tmp_path, "run", "--json", "--memory", memory, "builtin:busybox", "--", "true")
    assert (c_code, r_code) == (2, 2), (c_doc, r_doc)
    assert c_doc["error"] == r_doc["error"]
    assert c_doc["error"]["kind"] == "permanent" and "memory" in c_doc["error"]["message"]
    assert f"64..{host_memory_mib()} MiB" in c_doc["error"]["remediation"]
    _nothing_built(tmp_path)


def test_more_cpus_than_the_host_has_is_refused(tmp_path: Path) -> None:
    cpus = str(host_cpus() + 1)
    for args in (("create", "--json", "--cpus", cpus, "ws1"),
                 ("run", "--json", "--cpus", cpus, "builtin:busybox", "--", "true")):
        code, doc, _ = cli(tmp_path, *args)
        assert code == 2, doc
        assert f"1..{host_cpus()}" in doc["error"]["remediation"]
    _nothing_built(tmp_path)


def test_a_disk_larger_than_the_state_filesystem_is_refused(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    too_big = st.f_blocks * st.f_frsize // 2**20 + 1
    code, doc, _ = cli(tmp_path, "create", "--json", "--disk-size", str(too_big), "ws1")
    assert code == 2 and "disk size" in doc["error"]["message"], doc
    _nothing_built(tmp_path)


def test_env_without_equals_has_the_same_hint_everywhere(tmp_path: Path) -> None:
    errors = []
    for args in (("create", "--json", "-e", "FOO", "ws1"),
                 ("run", "--json", "-e", "FOO", "builtin:busybox", "--", "true"),
                 ("exec", "--json", "-e", "FOO", "ws1", "--", "true")):
        code, doc, _ = cli(tmp_path, *args)
        assert code == 2, (args, doc)
        errors.append(doc["error"])
    assert errors[0] == errors[1] == errors[2]
    assert "'FOO' is not K=V" in errors[0]["message"] and "-e KEY=VALUE" in errors[0]["remediation"]
    _nothing_built(tmp_path)


@pytest.mark.parametrize("args", [
    ("create", "--json", "ws1", "--profile", "huge"),
    ("create", "--json", "ws1", "--network", "bridged"),
    ("create", "--json", "ws1", "--network", "isolated", "-p", "8080:80"),
    ("create", "--json", "../x"),
    ("connect", "--json", "ws1"),
    ("cp", "--json", "a.txt", "b.txt"),
])
def test_every_bad_command_line_exits_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    code, doc, _ = cli(tmp_path, *args)
    assert code == 2, doc
    assert doc["ok"] is False and doc["error"]["kind"] == "permanent" and doc["error"]["remediation"]
    _nothing_built(tmp_path)


def test_a_huge_argv_is_refused_with_the_limit_and_the_remedy(tmp_path: Path) -> None:
    big = ["x" * (100 << 10)] * 10 + ["y" * (24 << 10)]  # 1 MiB; one host execve string is at most 128 KiB
    code, doc, _ = cli(tmp_path, "run", "--json", "builtin:busybox", "--", "echo", *big)
    assert code == 2, doc
    err = doc["error"]
    assert "1.0 MiB" in err["message"] and "256 KiB" in err["message"]
    assert "stdin" in err["remediation"] and "cp" in err["remediation"]
    assert "JSON payload" not in err["message"]
    _nothing_built(tmp_path)


def _with_kernel(root: Path) -> Path:
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if not (src / "kernel.json").is_file():
        pytest.fail("no qemu kernel installed in the default state root (run 'make install')")
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    return root


def test_a_failed_create_leaves_no_lock_and_no_staging(tmp_path: Path) -> None:
    root = _with_kernel(tmp_path / "state")
    code, doc, _ = cli(root, "create", "--json", "--backend", "qemu", "--supervisor", "/bin/false", "ws1")
    assert code == 1 and doc["ok"] is False, doc
    assert list((root / "locks").iterdir()) == [] if (root / "locks").exists() else True
    assert [p.name for p in (root / "workspaces").iterdir()] == []
    assert not (root / "run" / "ws1").exists()
