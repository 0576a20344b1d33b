"""kill -9 of the CLI in the middle of create, start, halt and delete.

Whatever the moment, afterwards ``status`` and ``list`` agree with the
process table, nothing is leaked, and the next command works.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fault_support import Faults


def _anywhere(root: Path, file: str | None = None) -> bool:
    """Whether any directory under ``workspaces/`` (holding ``file``) exists yet."""
    try:
        dirs = list((root / "workspaces").iterdir())
    except FileNotFoundError:
        return False
    return any(file is None or (d / file).exists() for d in dirs)


KILL_POINTS = {
    "directory made": lambda root: _anywhere(root),
    "disk being copied": lambda root: _anywhere(root, ".rootfs.ext4.tmp") or _anywhere(root, "rootfs.ext4"),
    "disk copied": lambda root: _anywhere(root, "rootfs.ext4"),
    "manifest written": lambda root: _anywhere(root, "workspace.json"),
    "runtime prepared": lambda root: (root / "run" / "ws").exists(),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_during_create_leaves_nothing_hidden(faults: Faults, point: str) -> None:
    faults.run("image", "pull", "builtin:busybox", timeout=300)  # the cached base disk: the kill lands in create
    proc = faults.spawn("create", "ws")
    assert faults.kill_when(proc, lambda: KILL_POINTS[point](faults.root)), "create ended before the kill"
    # either no trace of ws, or a complete prepared workspace: never a hidden half
    assert "ws" not in faults.names() or faults.check_reconciled("ws")["state"] == "prepared"
    faults.check_reconciled("ws")
    # the name is free again (or the create had finished): the next command works either way
    if "ws" not in faults.names():
        code, doc = faults.run("create", "ws")
        assert code == 0, doc
    assert faults.names() == ["ws"]
    assert faults.check_reconciled("ws")["state"] == "prepared"
    assert [p.name for p in (faults.root / "workspaces").iterdir()] == ["ws"]
    code, doc = faults.run("delete", "ws")
    assert code == 0 and doc["deleted"], doc
    faults.check_clean()


def test_gc_removes_what_a_killed_create_left(faults: Faults) -> None:
    faults.run("image", "pull", "builtin:busybox", timeout=300)
    proc = faults.spawn("create", "ws")
    assert faults.kill_when(proc, lambda: _anywhere(faults.root, "rootfs.ext4")), "create ended before the kill"
    code, doc = faults.run("gc")
    assert code == 0, doc
    assert len(doc["reapedStaging"]) == 1 and doc["reapedStaging"][0].startswith(".staging-ws-")
    faults.check_clean()


def _create(faults: Faults, name: str = "ws") -> None:
    code, doc = faults.run("create", "--profile", "tiny", name, timeout=300)
    assert code == 0, doc


def _vmm_spawned(root: Path) -> bool:
    try:
        return isinstance(json.loads((root / "run" / "ws" / "runtime.json").read_text()).get("pid"), int)
    except (OSError, ValueError):
        return False


def test_kill_during_start_after_the_vmm_is_spawned(faults: Faults) -> None:
    _create(faults)
    proc = faults.spawn("start", "ws")
    assert faults.kill_when(proc, lambda: _vmm_spawned(faults.root)), "start ended before the kill"
    status = faults.check_reconciled("ws")
    assert status["state"] in ("running", "starting", "failed"), status
    code, doc = faults.run("kill", "ws") if status["alive"] else (0, {})
    assert code == 0, doc
    code, doc = faults.run("start", "ws")
    assert code == 0 and doc["state"] == "running", doc
    faults.check_reconciled("ws")
    code, doc = faults.run("delete", "-f", "ws")
    assert code == 0, doc
    faults.check_clean()


@pytest.mark.parametrize("op", ["halt", "delete"])
def test_kill_during_halt_or_delete(faults: Faults, op: str) -> None:
    _create(faults)
    code, doc = faults.run("start", "ws")
    assert code == 0, doc
    lock = faults.root / "locks" / "ws.lock"

    def holding() -> bool:
        try:
            return f'"command": "{op}"' in lock.read_text()
        except OSError:
            return False

    proc = faults.spawn(*(["halt", "ws"] if op == "halt" else ["delete", "-f", "ws"]))
    killed = faults.kill_when(proc, holding)
    time.sleep(0.2)
    status = faults.check_reconciled("ws")
    if not killed:
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    if status:
        assert status["state"] in ("running", "halted", "stopped", "failed"), status
    code, doc = faults.run("delete", "-f", "ws")
    assert code == 0, doc
    faults.check_clean()
    _create(faults)  # the name works again
    code, doc = faults.run("delete", "ws")
    assert code == 0, doc
    faults.check_clean()


def test_racing_creates_of_one_name(faults: Faults) -> None:
    faults.run("image", "pull", "builtin:busybox", timeout=300)
    procs = [faults.spawn("create", "--profile", "tiny", "ws") for _ in range(3)]
    codes = [p.wait(timeout=300) for p in procs]
    assert sorted(codes) == [0, 1, 1], codes
    losers = [json.loads(p.stdout.read() if p.stdout else "{}") for p, c in zip(procs, codes) if c]
    assert all(d["error"]["kind"] == "conflict" and "already exists" in d["error"]["message"] for d in losers)
    assert faults.names() == ["ws"]
    assert [p.name for p in (faults.root / "workspaces").iterdir()] == ["ws"]
    faults.check_reconciled("ws")
    code, doc = faults.run("delete", "ws")
    assert code == 0, doc
    faults.check_clean()


def test_racing_start_and_delete(faults: Faults) -> None:
    _create(faults)
    start = faults.spawn("start", "ws")
    time.sleep(0.3)
    delete = faults.spawn("delete", "-f", "ws")
    start.wait(timeout=120)
    delete.wait(timeout=120)
    assert delete.returncode == 0, delete.stderr.read() if delete.stderr else ""
    faults.check_reconciled("ws")
    code, doc = faults.run("delete", "-f", "ws")
    assert code == 0, doc
    faults.check_clean()
    _create(faults)
    code, doc = faults.run("delete", "ws")
    assert code == 0, doc
    faults.check_clean()


def test_vm_gone_between_inspect_and_halt_is_named(faults: Faults, tmp_path: Path) -> None:
    """The VMM dies after halt checked it was running, before the supervisor acts:
    the error says it went down on its own, not "is not running (state running)"."""
    import shutil
    import sys

    real = shutil.which("microagent-qemu-supervisor", path=str(Path(sys.executable).parent))
    assert real
    wrapper = tmp_path / "supervisor"
    wrapper.write_text(f"""#!{sys.executable}
import json, os, signal, sys, time
raw = sys.stdin.buffer.read()
if json.loads(raw).get("command") == "halt":
    pid = json.load(open({str(faults.root / "run" / "ws" / "runtime.json")!r}))["pid"]
    os.kill(pid, signal.SIGKILL)
    while os.path.exists(f"/proc/{{pid}}") and open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.02)
r, w = os.pipe()
os.write(w, raw)
os.close(w)
os.dup2(r, 0)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
""")
    wrapper.chmod(0o755)
    _create(faults)
    code, doc = faults.run("start", "ws")
    assert code == 0, doc
    code, doc = faults.run("halt", "--supervisor", str(wrapper), "ws")
    assert code == 1, doc
    err = doc["error"]
    assert err["kind"] == "conflict" and "went down on its own while halt was starting" in err["message"], err
    assert "(state running)" not in err["message"] and "microagent logs ws" in err["remediation"]
    faults.check_reconciled("ws")
    code, doc = faults.run("start", "ws")
    assert code == 0, doc
    code, doc = faults.run("delete", "-f", "ws")
    assert code == 0, doc
    faults.check_clean()
