"""The warm path of ``run`` and of a fresh workspace's first ``start``, with real QEMU guests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from microagent.paths import host_arch, kernel_dir
from microagent.sdk import Workspace
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.oneshot import RunOutcome, run
from microagent.workspace.warm import warm_root


def _run(root: Path, *argv: str, **kw: object) -> RunOutcome:
    outcome = run("builtin:busybox", list(argv), state_dir=root, memory_mib=256, **kw)  # type: ignore[arg-type]
    assert outcome.exit_code == 0, outcome.result
    return outcome


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in warm_root(root).glob("*/*") if p.is_dir() and not p.name.startswith("."))


def _cli_run(root: Path, *args: str) -> dict:
    proc = subprocess.run([str(Path(sys.executable).parent / "microagent"), "run", "--state-dir", str(root), "--json",
                           "--memory", "256", *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_second_run_restores_the_boot_snapshot(snap_root: Path) -> None:
    first = _run(snap_root, "true")
    assert first.warm is False and "save_warm" in first.timings
    [entry] = _entries(snap_root)
    assert sorted(p.name for p in entry.iterdir()) == ["disk", "memory", "snapshot.json", "state"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in entry.iterdir())
    assert entry.stat().st_mode & 0o777 == 0o700

    # env, workdir, user and the command are applied after the restore; hostname and randomness are new
    script = 'echo "$(hostname) $FOO $(pwd) $(id -u)"; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"'
    second = _run(snap_root, "sh", "-c", script, env=["FOO=bar"], workdir="/tmp", user="65534")
    third = _run(snap_root, "sh", "-c", script, env=["FOO=bar"], workdir="/tmp", user="65534")
    assert second.warm and third.warm and "boot" not in second.timings
    line, rand2 = second.result.stdout.decode().splitlines()
    assert line == f"{second.workspace} bar /tmp 65534"
    assert rand2 != third.result.stdout.decode().splitlines()[1]  # forks of one snapshot: own entropy
    assert _entries(snap_root) == [entry]  # used, not replaced


def test_cli_reports_warm_and_cold_boots(snap_root: Path) -> None:
    warm = _cli_run(snap_root, "builtin:busybox", "--", "echo", "hi")
    assert warm["warm"] is True and warm["result"]["stdout"] == "hi\n"
    cold = _cli_run(snap_root, "--cold", "builtin:busybox", "--", "echo", "cold")
    assert cold["warm"] is False and cold["result"]["stdout"] == "cold\n" and "save_warm" not in cold["timings"]


def test_a_replaced_kernel_misses_and_boots(snap_root: Path) -> None:
    before = _entries(snap_root)
    kernel = kernel_dir(snap_root, "qemu", host_arch()) / "Image"
    shutil.copy2(kernel, kernel.with_name("Image.new"))
    os.replace(kernel.with_name("Image.new"), kernel)  # same bytes, a new file: the key changes
    assert _run(snap_root, "true").warm is False
    after = _entries(snap_root)
    assert len(after) == len(before) + 1
    assert _run(snap_root, "echo", "again").warm is True


def test_first_start_of_a_fresh_workspace_is_warm(snap_root: Path) -> None:
    store = WorkspaceStore(snap_root)
    try:
        store.create("w1", profile="tiny")
        assert store.start("w1").runtime["warm"] is False  # boots, saves the entry
        store.create("w2", profile="tiny")
        assert store.start("w2").runtime["warm"] is True
        ws = Workspace.open("w2", state_dir=snap_root)
        result = ws.exec(["sh", "-c", "hostname; echo mine > /root/f && sync"])
        assert result.exit_code == 0 and result.stdout.decode().splitlines() == ["w2"]
        ws.snapshot("later")  # a warm-started workspace has its own RAM file: it can be snapshotted
        ws.close()
        w1 = Workspace.open("w1", state_dir=snap_root)
        assert w1.exec(["test", "-e", "/root/f"]).exit_code == 1  # its own disk
        w1.close()
        store.halt("w2")
        assert store.start("w2").runtime.get("warm") is None  # booted before: a plain boot
        store.create("w3", profile="tiny")
        assert store.start("w3", cold=True).runtime.get("warm") is None
    finally:
        for name in ("w1", "w2", "w3"):
            if store.exists(name):
                store.delete(name, force=True)
