"""Setup commands and services in real QEMU guests (builtin:busybox)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from microagent.errors import Permanent
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.sessions import GuestConnection
from microagent.workspace.status import workspace_status

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MICROAGENT, *args], capture_output=True, text=True, timeout=120)


def guest_out(store: WorkspaceStore, name: str, script: str) -> str:
    with GuestConnection(store, name) as guest:
        result = guest.exec(["sh", "-c", script])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout.decode()


def test_setup_runs_once_in_order_across_restarts(vm_root: Path) -> None:
    store = WorkspaceStore(vm_root)
    store.create("setup-once", env=["GREETING=hello"],
                 setup=["echo one >> /setup.log", "echo \"two $GREETING $(pwd)\" >> /setup.log"])
    try:
        store.start("setup-once")
        assert guest_out(store, "setup-once", "cat /setup.log") == "one\ntwo hello /root\n"
        doc = workspace_status(store, "setup-once")
        assert doc["setup"]["state"] == "done" and doc["setup"]["steps"] == 2
        store.halt("setup-once")
        store.start("setup-once")
        assert guest_out(store, "setup-once", "cat /setup.log") == "one\ntwo hello /root\n"
        # a first start restored from the image's boot snapshot runs the setup after the restore
        store.create("setup-warm", env=["GREETING=hello"], setup=["echo warm >> /setup.log"])
        t = store.start("setup-warm")
        assert (t.runtime or {}).get("warm") is True, t.runtime
        assert guest_out(store, "setup-warm", "cat /setup.log") == "warm\n"
    finally:
        store.delete("setup-once", force=True)
        store.delete("setup-warm", force=True)


def test_a_failing_setup_leaves_the_workspace_failed_with_its_exit_code_and_output(vm_root: Path) -> None:
    store = WorkspaceStore(vm_root)
    store.create("setup-fails", setup=["echo first", "echo oops >&2; exit 3", "touch /never"])
    try:
        with pytest.raises(Permanent) as err:
            store.start("setup-fails")
        assert "setup command 2 of 3" in err.value.message and "exited with 3" in err.value.message
        assert "oops" in err.value.message
        doc = workspace_status(store, "setup-fails")
        assert doc["state"] == "failed" and not doc["alive"]
        assert doc["setup"]["state"] == "failed"
        assert doc["setup"]["exitCode"] == 3 and doc["setup"]["step"] == 2
        assert "oops" in doc["setup"]["outputTail"]
        text = cli("status", "setup-fails", "--state-dir", str(vm_root))
        assert text.returncode == 0 and "exited with 3" in text.stdout and "| oops" in text.stdout
        # a setup that never succeeded can be changed in place; the next start runs the new one
        from microagent.workspace.apply import apply
        from microagent.workspace.spec import parse_spec

        fixed = parse_spec("setup: [echo fixed > /fixed]\n")
        out = apply(store, "setup-fails", fixed)
        assert out["action"] == "updated"
        assert [c["key"] for c in out["changes"]] == ["setup"] and out["changes"][0]["effect"] == "next start"
        store.start("setup-fails")
        assert guest_out(store, "setup-fails", "cat /fixed") == "fixed\n"
        assert workspace_status(store, "setup-fails")["setup"]["state"] == "done"
    finally:
        store.delete("setup-fails", force=True)


def _service(store: WorkspaceStore, name: str) -> dict[str, Any]:
    return workspace_status(store, name, probe=False)["service"]


def test_a_service_is_restarted_on_failure_with_its_count_and_logs(vm_root: Path) -> None:
    store = WorkspaceStore(vm_root)
    store.create("svc", service="echo tick $$; exit 4", restart="on-failure")
    try:
        store.start("svc")
        deadline = time.monotonic() + 30
        while (svc := _service(store, "svc")).get("restarts", 0) < 2 and time.monotonic() < deadline:
            # exec sessions keep working while guest init reaps and restarts the service
            with GuestConnection(store, "svc") as guest:
                res = guest.exec(["sh", "-c", "sleep 0.3; exit 7"])
            assert res.exit_code == 7
        assert svc["restarts"] >= 2, svc
        assert svc["lastExit"] == {"code": 4} and svc["restart"] == "on-failure"
        assert svc["state"] in ("backoff", "running")
        logs = cli("logs", "svc", "--service", "--state-dir", str(vm_root))
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.count("tick ") >= 3, logs.stdout
        assert "service exited with code 4" in logs.stdout and "restarting in 2000 ms" in logs.stdout
        doc = json.loads(cli("status", "svc", "--json", "--state-dir", str(vm_root)).stdout)
        assert doc["service"]["restarts"] >= 2
        # -f prints what the service writes next, and ends when the workspace stops
        follow = subprocess.Popen([MICROAGENT, "logs", "svc", "--service", "-f", "--tail", "0",
                                   "--state-dir", str(vm_root)], stdout=subprocess.PIPE, text=True)
        assert follow.stdout is not None
        seen = ""
        while "tick" not in seen:  # the next restart is at most 8 s away
            line = follow.stdout.readline()
            assert line, "logs -f ended before the service's next output"
            seen += line
        store.halt("svc")  # the service's restarts do not hold up a clean shutdown
        assert follow.wait(timeout=30) == 0
        assert _service(store, "svc")["state"] == "not running"
    finally:
        store.delete("svc", force=True)


def test_a_service_runs_from_every_boot_and_never_is_not_restarted(vm_root: Path) -> None:
    store = WorkspaceStore(vm_root)
    store.create("svc-never", env=["WORD=still"],
                 service="echo $WORD > /run/svc-word; while :; do sleep 1; done")
    try:
        for _ in range(2):
            store.start("svc-never")
            svc = _service(store, "svc-never")
            assert svc["state"] == "running" and svc["restarts"] == 0 and svc["pid"] > 1, svc
            assert guest_out(store, "svc-never", "cat /run/svc-word") == "still\n"
            guest_out(store, "svc-never", f"kill {svc['pid']}")
            deadline = time.monotonic() + 10
            while _service(store, "svc-never")["state"] == "running" and time.monotonic() < deadline:
                time.sleep(0.2)
            svc = _service(store, "svc-never")
            assert svc["state"] == "exited" and svc["lastExit"] == {"signal": 15} and svc["restarts"] == 0
            store.halt("svc-never")
    finally:
        store.delete("svc-never", force=True)


def test_run_takes_setup_and_service(vm_root: Path) -> None:
    ok = cli("run", "--state-dir", str(vm_root), "--setup", "echo set > /s", "--service", "echo svc > /run/svc",
             "builtin:busybox", "--", "sh", "-c", "cat /s; sleep 1; cat /run/svc")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "set\nsvc\n"
    failed = cli("run", "--state-dir", str(vm_root), "--setup", "echo nope >&2; exit 5", "builtin:busybox",
                 "--", "touch", "/ran")
    assert failed.returncode == 125
    assert "setup command 1 of 1" in failed.stderr and "exited with 5" in failed.stderr and "nope" in failed.stderr
