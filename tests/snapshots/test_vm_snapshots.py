"""Snapshots, restore in place and forks with real QEMU guests (one boot for the module)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from microagent.errors import Conflict, InvalidRequest, MicroagentError, NotFound
from microagent.sdk import Workspace
from microagent.workspace import snapshots
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.snapshots import snapshot_dir


@pytest.fixture(scope="module")
def base(snap_root: Path) -> Iterator[Workspace]:
    ws = Workspace.create("base", profile="tiny", state_dir=snap_root)
    ws.exec(["sh", "-c", "echo kept > /root/before && sync"])
    ws.snapshot("ready")
    yield ws
    for name in ("fork-a", "fork-b", "fork-c", "base"):
        WorkspaceStore(snap_root).delete(name, force=True)


def _out(ws: Workspace, script: str) -> str:
    result = ws.exec(["sh", "-c", script])
    assert result.exit_code == 0, result
    return result.stdout.decode().strip()


def test_snapshot_is_listed_and_status_shows_it(base: Workspace, snap_root: Path) -> None:
    tags = [s["tag"] for s in base.snapshots()]
    assert tags == ["ready"]
    assert [s["tag"] for s in base.status()["snapshots"]] == ["ready"]
    path = snapshot_dir(snap_root, "base", "ready")
    assert sorted(p.name for p in path.iterdir()) == ["disk", "memory", "snapshot.json", "state"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in path.iterdir())
    doc = json.loads((path / "snapshot.json").read_text())
    assert doc["vmmVersion"].startswith("QEMU emulator version") and "-device virtio-blk-device" in doc["layout"]
    ram = snap_root / "run" / "base" / "ram"
    assert ram.stat().st_mode & 0o777 == 0o600
    assert ram.resolve().parent == Path(f"/dev/shm/microagent-{os.getuid()}")  # tmpfs: as fast as anonymous RAM
    assert ram.resolve().parent.stat().st_mode & 0o777 == 0o700
    assert base.state.value == "running"  # the snapshot left it running


def test_bad_tags_and_duplicates_are_refused(base: Workspace) -> None:
    for tag in ("", "-x", "a/b", "a" * 64, "x\n"):
        with pytest.raises(InvalidRequest):
            base.snapshot(tag)
    with pytest.raises(Conflict, match="already has a snapshot ready"):
        base.snapshot("ready")
    with pytest.raises(NotFound):
        base.restore("missing")


def test_a_failed_save_leaves_the_workspace_running_and_no_snapshot(
        base: Workspace, snap_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_stage = snapshots.stage

    def vanishing_stage(root: Path, name: str, tag: str) -> Path:
        path = real_stage(root, name, tag)
        path.rmdir()  # QEMU's "cat > <stage>/state" fails: the migration fails mid-snapshot
        return path

    monkeypatch.setattr(snapshots, "stage", vanishing_stage)
    with pytest.raises(MicroagentError, match="saving the device state failed"):
        base.snapshot("broken")
    monkeypatch.undo()

    def failing_publish(*args: object) -> None:
        raise OSError("disk full while writing snapshot.json")

    monkeypatch.setattr(snapshots, "publish", failing_publish)
    with pytest.raises(OSError):
        base.snapshot("broken")
    monkeypatch.undo()
    assert base.state.value == "running"
    assert _out(base, "cat /root/before") == "kept"
    assert [s["tag"] for s in base.snapshots()] == ["ready"]
    assert not list(snapshot_dir(snap_root, "base", "ready").parent.glob(".stage-*"))


def test_restore_in_place(base: Workspace, snap_root: Path) -> None:
    _out(base, "echo later > /root/after && sync")
    base.restore("ready")
    assert _out(base, "cat /root/before") == "kept"
    assert _out(base, "ls /root") == "before"  # the disk is the snapshot's
    guest_now = int(_out(base, "date +%s"))
    assert abs(guest_now - time.time()) < 5  # the clock was set from the host
    assert _out(base, "hostname") == "base"
    from microagent.channel import open_channel

    with open_channel(snap_root / "run" / "base" / "control.sock") as conn:  # the helper's cached guest HELLO
        assert conn.guest_hello["generation"] >= 1


def test_forks_are_private_and_differ(base: Workspace, snap_root: Path) -> None:
    a = Workspace.create("fork-a", from_snapshot="base:ready", state_dir=snap_root)
    b = base.fork("fork-b", "ready")
    assert _out(a, "cat /root/before") == _out(b, "cat /root/before") == "kept"
    assert _out(a, "hostname") == "fork-a" and _out(b, "hostname") == "fork-b"
    rand = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
    assert _out(a, rand) != _out(b, rand)
    _out(a, "echo mine > /root/fork-file && sync")
    assert _out(base, "ls /root") == "before"
    assert _out(b, "ls /root") == "before"
    assert _out(a, "ls /root").split() == ["before", "fork-file"]


def test_a_restored_workspace_keeps_its_ram_in_the_snapshot_state(base: Workspace, snap_root: Path) -> None:
    """A restore maps the snapshot's memory copy-on-write (no RAM file of its own); a
    snapshot of it carries the RAM in ``state``, and restores and forks of that work."""
    base.restore("ready")
    assert not (snap_root / "run" / "base" / "ram").exists()
    _out(base, "mkdir -p /dev/shm && mount -t tmpfs none /dev/shm 2>/dev/null; echo only-in-ram > /dev/shm/x")
    base.snapshot("again")
    path = snapshot_dir(snap_root, "base", "again")
    assert sorted(p.name for p in path.iterdir()) == ["disk", "snapshot.json", "state"]
    assert path.joinpath("state").stat().st_size > 16 << 20  # the guest's pages, not only device state
    _out(base, "rm /dev/shm/x")
    base.restore("again")
    assert _out(base, "cat /dev/shm/x /root/before") == "only-in-ram\nkept"
    c = base.fork("fork-c", "again")
    assert _out(c, "cat /dev/shm/x; hostname") == "only-in-ram\nfork-c"
    WorkspaceStore(snap_root).delete("fork-c", force=True)
    assert WorkspaceStore(snap_root).remove_snapshot("base", "again")["removed"]


def test_refusals_leave_the_workspace_as_it_was(base: Workspace, snap_root: Path) -> None:
    store = WorkspaceStore(snap_root)
    base.kill()
    with pytest.raises(Conflict, match="snapshot needs one of: running, paused"):
        base.snapshot("stopped")
    path = snapshot_dir(snap_root, "base", "ready")
    memory = path / "memory"
    stat = memory.stat()
    os.utime(memory, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(Conflict, match="memory file of snapshot base:ready changed"):
        base.start(from_snapshot="ready")
    os.utime(memory, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    manifest = path / "snapshot.json"
    original = manifest.read_text()
    doc = json.loads(original)
    manifest.write_text(json.dumps({**doc, "vmmVersion": "QEMU emulator version 1.0"}))
    try:
        with pytest.raises(Conflict, match="saved by 'QEMU emulator version 1.0'"):
            base.start(from_snapshot="ready")
    finally:
        manifest.write_text(original)
    assert store.observe("base").state.value in ("stopped", "failed")
    assert not store.observe("base").alive
    assert not list(path.parent.glob(".stage-*"))
    base.start(from_snapshot="ready")
    assert _out(base, "cat /root/before") == "kept"
    assert store.remove_snapshot("base", "ready")["removed"]
    assert base.snapshots() == []
    base.kill()
    base.start()  # a cold boot: its RAM in a file of its own again
    ram = (snap_root / "run" / "base" / "ram").resolve()
    assert ram.exists()
    base.kill()
    assert not ram.exists()  # the RAM file goes with the VM
