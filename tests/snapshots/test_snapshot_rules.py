"""Snapshot rules that need no guest: tags, sources, wire gating, QEMU layout and version checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microagent.errors import Conflict, InvalidRequest
from microagent.supervisors.qemu.argv import device_layout, memory_backend, qemu_argv
from microagent.vmkit.types import Config, parse_request
from microagent.workspace import snapshots

IDENTITY = {"requestID": "r", "runtimeID": "ws", "role": "workload", "backend": "qemu"}


@pytest.mark.parametrize("tag", ["a", "ready", "v1.2_x-y", "A" * 63])
def test_good_tags(tag: str) -> None:
    assert snapshots.check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".hidden", "-x", "a/b", "a b", "A" * 64, "ok\n", "../x"])
def test_bad_tags(tag: str) -> None:
    with pytest.raises(InvalidRequest, match="not a safe name"):
        snapshots.check_tag(tag)


def test_fork_sources() -> None:
    assert snapshots.parse_source("base:ready") == ("base", "ready")
    for bad in ("base", "base:", ":ready", "../x:y", "a:b:c"):
        with pytest.raises(InvalidRequest):
            snapshots.parse_source(bad)


def test_snapshot_only_on_start_and_snapshot() -> None:
    spec = {"path": "/tmp/s"}
    parse_request({"command": "snapshot", "identity": IDENTITY, "config": {"stateDir": "/tmp"}, "snapshot": spec})
    with pytest.raises(InvalidRequest, match="snapshot is required"):
        parse_request({"command": "snapshot", "identity": IDENTITY, "config": {"stateDir": "/tmp"}})
    with pytest.raises(InvalidRequest, match="only valid for commands 'start' and 'snapshot'"):
        parse_request({"command": "kill", "identity": IDENTITY, "config": {"stateDir": "/tmp"}, "snapshot": spec})
    with pytest.raises(InvalidRequest, match="absolute path"):
        parse_request({"command": "snapshot", "identity": IDENTITY, "config": {"stateDir": "/tmp"},
                       "snapshot": {"path": "relative"}})


def _argv(cfg: Config, mem_path: str) -> list[str]:
    return qemu_argv("qemu", cfg, hostname="h", accel="tcg", memory_args=memory_backend(cfg, mem_path, share=True))


def test_layout_ignores_files_but_not_devices(tmp_path: Path) -> None:
    cfg = Config(stateDir="/s", kernelPath="/k", rootfsPath="/a/rootfs.ext4", memoryMiB=256, cpuCount=1)
    moved = Config(stateDir="/t", kernelPath="/k", rootfsPath="/b/rootfs.ext4", memoryMiB=256, cpuCount=1)
    assert device_layout(_argv(cfg, "ram")) == device_layout(_argv(moved, "/x/memory"))
    bigger = Config(stateDir="/s", kernelPath="/k", rootfsPath="/a/rootfs.ext4", memoryMiB=512, cpuCount=1)
    assert device_layout(_argv(cfg, "ram")) != device_layout(_argv(bigger, "ram"))


def test_memory_backend_is_json_so_commas_stay_in_the_path() -> None:
    cfg = Config(stateDir="/s", memoryMiB=256)
    flag, spec, machine, backend = memory_backend(cfg, "/x,share=off/ram", share=True)
    assert (flag, machine, backend) == ("-object", "-machine", "memory-backend=ram0")
    assert json.loads(spec) == {"qom-type": "memory-backend-file", "id": "ram0", "mem-path": "/x,share=off/ram",
                                "size": 256 * 1024 * 1024, "share": True}


def test_incoming_only_when_restoring() -> None:
    cfg = Config(stateDir="/s", kernelPath="/k", rootfsPath="/r")
    assert "-incoming" not in qemu_argv("qemu", cfg, hostname="h", accel="tcg")
    assert qemu_argv("qemu", cfg, hostname="h", accel="tcg", incoming=True)[-2:] == ["-incoming", "defer"]


def test_version_and_layout_mismatch_are_refused(tmp_path: Path) -> None:
    from microagent.supervisors.qemu import snapshot as qemu_snapshot
    from microagent.supervisors.qemu.backend import QemuBackend
    from microagent.vmkit.types import Identity, Request, SnapshotSpec

    def refuse(recorded: str, layout: str, version: str, now: str) -> None:
        spec = SnapshotSpec(path=str(tmp_path), vmmVersion=recorded, layout=layout)
        request = Request(command="start", identity=Identity(requestID="r", runtimeID="ws", role="workload",
                                                             backend="qemu"),
                          config=Config(stateDir=str(tmp_path)), snapshot=spec)
        QemuBackend().refuse_incompatible(request, version, now, qemu_snapshot.WHY_VERSION)

    refuse("QEMU 7.2", "-m 256", "QEMU 7.2", "-m 256")
    with pytest.raises(Conflict, match="another version"):
        refuse("QEMU 7.1", "-m 256", "QEMU 7.2", "-m 256")
    with pytest.raises(Conflict, match="device layout differs"):
        refuse("QEMU 7.2", "-m 256", "QEMU 7.2", "-m 512")


def test_stage_publish_remove(tmp_path: Path) -> None:
    staged = snapshots.stage(tmp_path, "ws", "t1")
    assert staged.name.startswith(".stage-") and staged.stat().st_mode & 0o777 == 0o700
    stale = snapshots.stage(tmp_path, "ws", "t2")
    snapshots.stage(tmp_path, "ws", "t3")  # a later create under the lock removes stale stages
    assert not staged.exists() and not stale.exists()
    assert snapshots.list_snapshots(tmp_path, "ws") == []  # stages are never snapshots
    assert snapshots.remove(tmp_path, "ws", "t1") is False
    assert snapshots.next_generation(tmp_path, "ws") == 1
    assert snapshots.next_generation(tmp_path, "ws") == 2


def test_backends_without_snapshots_refuse_them(tmp_path: Path) -> None:
    from microagent.errors import Unsupported
    from microagent.supervisors.vmm import VMMBackend
    from microagent.vmkit.types import Identity, Request, SnapshotSpec

    class NoSnapshots(VMMBackend):  # every shipped backend takes snapshots now (apple-vf, windows-hyperv:
        name = "qemu"               # tests/applevf/test_snapshots.py, tests/hyperv/test_snapshots.py)

    ident = Identity(requestID="r", runtimeID="ws", role="workload", backend="qemu")
    cfg = Config(stateDir=str(tmp_path))
    backend = NoSnapshots()
    with pytest.raises(Unsupported, match="does not implement 'snapshot'"):
        backend.snapshot(Request(command="snapshot", identity=ident, config=cfg,
                                 snapshot=SnapshotSpec(path=str(tmp_path))))
    assert not backend.supports_snapshots
