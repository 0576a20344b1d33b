"""Everything under the state root is private whatever the umask, and a state root
another user owns or can write to is refused."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from microagent.errors import PolicyDenied
from microagent.fsutil import atomic_write, private_dir
from microagent.paths import host_arch, kernel_dir, require_private_root, state_root

MICROAGENT = str(Path(sys.executable).parent / "microagent")
NOBODY = 65534


def cli(state: Path | None, *args: str, umask: str = "000", env: dict[str, str] | None = None,
        timeout: float = 300) -> tuple[int, dict[str, Any]]:
    """The CLI under ``umask``; ``--json`` goes before any ``--``."""
    args = (*args[: args.index("--")], "--json", *args[args.index("--"):]) if "--" in args else (*args, "--json")
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MICROAGENT_BACKEND": "qemu"}
    if state is not None:
        base.update(MICROAGENT_STATE_DIR=str(state), HOME=str(state))
    proc = subprocess.run(["sh", "-c", f'umask {umask}; exec "$@"', "sh", MICROAGENT, *args],
                          capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})})
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"not one JSON document: {proc.stdout!r} {proc.stderr!r}")


def loose_modes(root: Path) -> list[str]:
    """Everything under ``root`` (itself included) that is not private: dirs must be 0700,
    files and sockets owner-only (0600; 0400 for read-only blobs, 0700 for executables)."""
    bad = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            ok = mode == 0o700
        elif stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            ok = mode & 0o077 == 0
        else:
            ok = stat.S_ISLNK(st.st_mode)
        if not ok:
            bad.append(f"{oct(mode)} {path.relative_to(root)}")
    return bad


@pytest.fixture
def umask_000() -> Any:
    old = os.umask(0)
    yield
    os.umask(old)


def test_atomic_write_and_private_dir_ignore_the_umask(tmp_path: Path, umask_000: None) -> None:
    deep = private_dir(tmp_path / "a" / "b" / "c")
    for d in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    atomic_write(deep / "f", b"secret")
    assert stat.S_IMODE((deep / "f").stat().st_mode) == 0o600 and (deep / "f").read_bytes() == b"secret"
    (deep / "f").chmod(0o644)
    atomic_write(deep / "f", b"again")
    assert stat.S_IMODE((deep / "f").stat().st_mode) == 0o600
    assert sorted(p.name for p in deep.iterdir()) == ["f"]  # no temp file left


def test_cli_without_a_vm_leaves_nothing_readable(tmp_path: Path) -> None:
    root = tmp_path / "fresh" / "state"
    code, doc = cli(root, "create", "x", "--image", "nope:/", "--profile", "tiny")
    assert code == 1
    cli(root, "delete", "ghost")
    assert root.is_dir() and loose_modes(root) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_state_root_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)
    for args in (("list",), ("create", "ws"), ("delete", "ws"), ("image", "ls"), ("gc",)):
        code, doc = cli(root, *args)
        assert code == 1 and doc["error"]["kind"] == "policy_denied", (args, doc)
        assert str(root) in doc["error"]["message"] and f"uid {NOBODY}" in doc["error"]["message"]
        assert "--state-dir" in doc["error"]["remediation"]
    assert list(root.iterdir()) == []
    with pytest.raises(PolicyDenied):
        state_root(root)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_a_state_root_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "open"
    root.mkdir()
    root.chmod(mode)
    code, doc = cli(root, "list")
    assert code == 1 and doc["error"]["kind"] == "policy_denied"
    assert str(root) in doc["error"]["message"] and "writable by other users" in doc["error"]["message"]
    assert f"chmod 700 {root}" in doc["error"]["remediation"]
    assert list(root.iterdir()) == []


def test_a_readable_state_root_of_ours_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    root.chmod(0o755)
    code, doc = cli(root, "list")
    assert code == 0 and doc["ok"] is True
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_the_tmpdir_fallback_is_refused_when_another_user_planted_it(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    planted = shared / "microagent"
    planted.mkdir(mode=0o700)
    os.chown(planted, NOBODY, NOBODY)
    env = {"TMPDIR": str(shared)}  # and no HOME, no MICROAGENT_STATE_DIR
    code, doc = cli(None, "list", env=env)
    assert code == 1 and doc["error"]["kind"] == "policy_denied"
    assert str(planted) in doc["error"]["message"]
    # a symlink planted there (to a directory of ours) is refused as well
    planted.rmdir()
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    planted.symlink_to(mine)
    os.lchown(planted, NOBODY, NOBODY)
    code, doc = cli(None, "list", env=env)
    assert code == 1 and doc["error"]["kind"] == "policy_denied" and "symlink" in doc["error"]["message"]
    # without anything planted, the fallback is created private
    planted.unlink()
    code, doc = cli(None, "list", env=env)
    assert code == 0 and stat.S_IMODE(planted.stat().st_mode) == 0o700


def test_require_private_root_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(PolicyDenied, match="not a directory"):
        require_private_root(tmp_path / "f")


@pytest.mark.vm
def test_a_real_boot_under_umask_000_leaves_nothing_readable(tmp_path: Path) -> None:
    """create, start, exec, with -e carrying a secret, under umask 000: sockets, serial.log,
    config.disk, runtime.json, the disk, the locks: every mode is private."""
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed (run 'make install')")
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if not (src / "kernel.json").is_file():
        pytest.skip(f"no qemu kernel in {src} (run 'make install')")
    root = tmp_path / "state"
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    for path in [root, *root.rglob("*")]:  # as 'kernel install' would have left them
        path.chmod(0o700 if path.is_dir() else 0o600)
    try:
        code, doc = cli(root, "create", "m1", "--profile", "tiny", "-e", "API_KEY=s3cret")
        assert code == 0, doc
        code, doc = cli(root, "start", "m1")
        assert code == 0 and doc["state"] == "running", doc
        code, doc = cli(root, "exec", "m1", "--", "sh", "-c", "echo $API_KEY")
        assert code == 0 and doc["result"]["stdout"].strip() == "s3cret", doc
        rt = root / "run" / "m1"
        present = {p.name for p in rt.iterdir()}
        assert {"qmp.sock", "channel.sock", "control.sock", "serial.log", "config.disk", "runtime.json",
                "events.jsonl", "vmm.log", "router.log"} <= present, present
        assert loose_modes(root) == []
    finally:
        cli(root, "delete", "-f", "m1")
    assert loose_modes(root) == []
