"""Firecracker snapshots against the real ``firecracker`` binary, as far as no guest is needed.

Without hardware KVM the stock guest kernel never gets anywhere, but the VMM
runs: the supervisor's ``snapshot`` pauses it, has Firecracker write its
state and memory files and copies the disk; a new firecracker process loads
them through ``PUT /snapshot/load``.  What needs a guest (the channel after a
restore, files, clock, entropy, forks) runs in the slow lane:
tests/firecracker_slow/test_slow_snapshot.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from microagent.errors import Conflict, Permanent
from microagent.supervisors.firecracker import snapshot
from microagent.supervisors.firecracker.api import FirecrackerAPI
from microagent.supervisors.firecracker.config import drive_links, firecracker_argv, firecracker_config
from microagent.vmkit.types import Config

from firecracker.conftest import SUPERVISOR

VERSION = "Firecracker v1.12.1"


# --- pure: the layout, the version check, the linked configuration ---------------


def _cfg(**kw: object) -> Config:
    base: dict[str, object] = dict(stateDir="/s", kernelPath="/k/Image", rootfsPath="/w/rootfs.ext4",
                                   initrdPath="/k/initramfs.cpio", memoryMiB=256, cpuCount=2,
                                   configDiskPath="/run/w/config.disk")
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def test_linked_configuration_names_only_runtime_dir_paths() -> None:
    doc = firecracker_config(_cfg(), "h", linked=True)
    assert [d["path_on_host"] for d in doc["drives"]] == ["drive-rootfs", "drive-config"]
    assert doc["vsock"]["uds_path"] == "vsock.sock"
    assert drive_links(_cfg()) == {"drive-rootfs": "/w/rootfs.ext4", "drive-config": "/run/w/config.disk"}
    assert "--config-file" not in firecracker_argv("/fc", "w", restore=True)


def test_layout_and_version_checks() -> None:
    layout = snapshot.device_layout(firecracker_config(_cfg(), "h", linked=True))
    assert json.loads(layout) == {"vcpus": 2, "memMiB": 256, "drives": [["rootfs", False], ["config", True]],
                                  "vsockCid": 3, "net": []}
    assert snapshot.device_layout(firecracker_config(_cfg(hostname="other"), "x", linked=True)) == layout
    from microagent.supervisors.firecracker.backend import FirecrackerBackend
    from microagent.vmkit.types import Identity, Request, SnapshotSpec

    def refuse(recorded: str, recorded_layout: str, now: str) -> None:
        request = Request(command="start", identity=Identity(requestID="r", runtimeID="ws", role="workload",
                                                             backend="firecracker"),
                          config=_cfg(), snapshot=SnapshotSpec(path="/s", vmmVersion=recorded, layout=recorded_layout))
        FirecrackerBackend().refuse_incompatible(request, VERSION, now, snapshot.WHY_VERSION)

    refuse(VERSION, layout, layout)
    with pytest.raises(Conflict, match="saved by 'Firecracker v1.11.0', this host runs 'Firecracker v1.12.1'"):
        refuse("Firecracker v1.11.0", layout, layout)
    bigger = snapshot.device_layout(firecracker_config(_cfg(memoryMiB=512), "h", linked=True))
    with pytest.raises(Conflict, match="device layout differs"):
        refuse(VERSION, layout, bigger)


# --- the real binary ---------------------------------------------------------------


def _bare_firecracker(binary: Path, cwd: Path) -> tuple[subprocess.Popen[bytes], FirecrackerAPI]:
    """A firecracker with its API and no configuration (what a restore starts), cwd ``cwd``."""
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "vmm.log").touch()
    proc = subprocess.Popen(firecracker_argv(str(binary), "bare", restore=True), cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = FirecrackerAPI(cwd / "firecracker.sock")
    deadline = time.monotonic() + 10
    while not (cwd / "firecracker.sock").exists():
        assert proc.poll() is None and time.monotonic() < deadline, (cwd / "vmm.log").read_text()
        time.sleep(0.01)
    return proc, api


def _snapshot_request(fc: Any, name: str, dest: Path) -> dict[str, Any]:
    request = {"command": "snapshot", "identity": {"requestID": "t-snap", "runtimeID": name, "role": "workload",
                                                  "backend": "firecracker"},
               "config": fc.config(), "snapshot": {"path": str(dest)}}
    env = {**os.environ, "MICROAGENT_FIRECRACKER": str(fc.binary), "MICROAGENT_FIRECRACKER_ALLOW_NO_KVM": "1"}
    proc = subprocess.run([SUPERVISOR], input=json.dumps(request), capture_output=True, text=True, env=env,
                          timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def test_firecracker_refuses_a_snapshot_of_a_vm_never_started(fc, tmp_path: Path) -> None:
    proc, api = _bare_firecracker(fc.binary, tmp_path / "bare")
    try:
        assert api.instance_info().state == "Not started"
        with pytest.raises(Conflict, match=r"firecracker refused PUT /snapshot/create \(400\)"):
            api.request("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": str(tmp_path / "s"),
                                                    "mem_file_path": str(tmp_path / "m")})
        with pytest.raises(Conflict, match="reports the VM 'Not started'; only a started VM can be snapshotted"):
            snapshot.save(api, tmp_path, tmp_path / "no-disk", resume=True)
        # a load of files that are not there: firecracker's reason, on our error
        with pytest.raises(Permanent, match="firecracker could not load the snapshot .*: firecracker refused "
                                            r"PUT /snapshot/load \(400\): .*"):
            snapshot.load(api, tmp_path / "absent")
        assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()
    finally:
        proc.kill()
        proc.wait()


def test_snapshot_of_a_paused_vmm_and_a_relocated_load(fc, tmp_path: Path) -> None:
    """The supervisor's snapshot of a (guestless) VM; a new firecracker in another directory
    loads it and opens that directory's disk, not the one the snapshot was taken from."""
    fc.ok("start")
    rt = fc.runtime_dir()
    refused = _snapshot_request(fc, "ws", tmp_path / "early")
    assert refused["error"]["kind"] == "conflict" and "only a running or paused" in refused["error"]["message"]
    # a save that fails half-way (firecracker cannot write its files) leaves the VM running
    api = FirecrackerAPI(rt / "firecracker.sock")
    with pytest.raises(Conflict, match="saving the snapshot failed: firecracker refused PUT /snapshot/create"):
        snapshot.save(api, tmp_path / "absent-dir", fc.rootfs, resume=True)
    assert api.instance_info().state == "Running"
    assert fc.ok("pause")["event"]["state"] == "paused"

    dest = tmp_path / "snap"
    dest.mkdir()
    t0 = time.monotonic()
    doc = _snapshot_request(fc, "ws", dest)
    saved_s = time.monotonic() - t0
    assert doc["ok"], doc
    assert doc["event"]["state"] == "paused" and doc["event"]["detail"].startswith("snapshot saved in ")
    assert doc["runtime"]["vmm"] == "firecracker" and doc["runtime"]["vmmVersion"] == VERSION
    assert json.loads(doc["runtime"]["layout"])["drives"] == [["rootfs", False], ["config", True]]
    assert sorted(p.name for p in dest.iterdir()) == ["disk", "memory", "state"]
    assert (dest / "memory").stat().st_size == 128 << 20  # the whole guest memory
    assert (dest / "disk").read_bytes() == fc.rootfs.read_bytes()
    assert api.instance_info().state == "Paused"  # left as it was
    described = subprocess.run([str(fc.binary), "--describe-snapshot", str(dest / "state")],
                               capture_output=True, text=True, timeout=10)
    print(f"firecracker snapshot of a 128 MiB VM: {saved_s:.2f}s; format {described.stdout.splitlines()[0]}")
    fc.ok("kill")

    # a new firecracker elsewhere: without the drive links the load fails on the recorded relative path
    proc, other = _bare_firecracker(fc.binary, tmp_path / "elsewhere")
    try:
        with pytest.raises(Permanent, match="could not load the snapshot.*drive-rootfs|No such file"):
            snapshot.load(other, dest)
    finally:
        proc.kill()
        proc.wait()
    fork_disk = tmp_path / "fork.ext4"
    fork_disk.write_bytes((dest / "disk").read_bytes())
    there = tmp_path / "fork"
    there.mkdir()
    os.symlink(fork_disk, there / "drive-rootfs")
    os.symlink(rt / "config.disk", there / "drive-config")
    proc, other = _bare_firecracker(fc.binary, there)
    try:
        t0 = time.monotonic()
        snapshot.load(other, dest)
        print(f"firecracker snapshot load: {time.monotonic() - t0:.2f}s")
        assert other.instance_info().state == "Running"
        open_files = set()
        for fd in os.listdir(f"/proc/{proc.pid}/fd"):
            try:
                open_files.add(os.readlink(f"/proc/{proc.pid}/fd/{fd}"))
            except FileNotFoundError:
                pass  # closed meanwhile
        assert str(fork_disk) in open_files and str(fc.rootfs) not in open_files
        assert (there / "vsock.sock").is_socket()  # the vsock device's host side, bound where it runs
        # the memory is mapped private: the snapshot's file is never written
        maps = Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
        assert any(line.endswith(str(dest / "memory")) and line.split()[1][3] == "p" for line in maps)
    finally:
        proc.kill()
        proc.wait()


def test_restore_refuses_another_version_or_layout_before_launching(fc, tmp_path: Path) -> None:
    dest = tmp_path / "snap"
    dest.mkdir()
    for name in ("state", "memory", "disk"):
        (dest / name).write_bytes(b"x")
    layout = snapshot.device_layout(firecracker_config(_cfg(memoryMiB=128, cpuCount=1), "h", linked=True))
    for version, recorded_layout, expect in (("Firecracker v1.11.0", layout, "saved by 'Firecracker v1.11.0'"),
                                             (VERSION, layout.replace('"memMiB":128', '"memMiB":64'),
                                              "device layout differs")):
        request = {"command": "start", "identity": {"requestID": "t", "runtimeID": "ws", "role": "workload",
                                                     "backend": "firecracker"},
                   "config": fc.config(readiness="guest"),
                   "snapshot": {"path": str(dest), "vmmVersion": version, "layout": recorded_layout}}
        env = {**os.environ, "MICROAGENT_FIRECRACKER": str(fc.binary), "MICROAGENT_FIRECRACKER_ALLOW_NO_KVM": "1"}
        proc = subprocess.run([SUPERVISOR], input=json.dumps(request), capture_output=True, text=True, env=env,
                              timeout=60)
        doc = json.loads(proc.stdout)
        assert doc["ok"] is False and doc["error"]["kind"] == "conflict", doc
        assert expect in doc["error"]["message"]
        assert fc.rootfs.read_bytes() != b"x"  # the disk was not replaced
        assert fc.leftovers() == []


def test_a_disk_name_that_is_not_a_file_name_is_refused(fc, tmp_path: Path) -> None:
    disk = tmp_path / "data.img"
    disk.write_bytes(b"\0" * 4096)
    doc = fc.call("start", disks=[{"name": "../escape", "path": str(disk), "mountpoint": "/data"}])
    assert doc["ok"] is False and doc["error"]["kind"] == "permanent", doc  # InvalidRequest
    assert doc["error"]["message"] == "drive id 'disk-../escape' is not a file name"
    assert not (fc.state / "run" / "escape").exists() and fc.leftovers() == []
