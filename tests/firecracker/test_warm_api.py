"""Firecracker boot snapshots (the warm path) against the real binary, as far as no guest is needed.

A guestless VM (no hardware KVM here) is saved as a warm entry through the
same calls ``run`` makes (:func:`microagent.workspace.warm.save_booted`);
then: one entry's memory file serves two restores at once, each mapping it
private, and stays whole for the next lookup; an entry another firecracker
saved, or whose state file firecracker refuses, is dropped by the run's
restore, leaves nothing running, and the same workspace then starts cold.
What needs a guest (the command after a warm restore, clock, entropy) runs
in the slow lane: tests/firecracker_slow/test_slow_warm.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from microagent.images.ext4 import copy_disk
from microagent.supervisors.firecracker import snapshot
from microagent.workspace import warm
from microagent.workspace.boot_plan import BootPlan
from microagent.workspace.oneshot import _restore
from microagent.workspace.supervisor_client import SupervisorClient

from firecracker.conftest import FC, SUPERVISOR
from firecracker.test_snapshot_api import VERSION, _bare_firecracker


@pytest.fixture
def client(fc: FC, monkeypatch: pytest.MonkeyPatch) -> SupervisorClient:
    monkeypatch.setenv("MICROAGENT_FIRECRACKER", str(fc.binary))
    monkeypatch.setenv("MICROAGENT_FIRECRACKER_ALLOW_NO_KVM", "1")
    return SupervisorClient("firecracker", fc.state, SUPERVISOR)


def _key(fc: FC) -> warm.WarmKey:
    return warm.key_for(fc.state, backend="firecracker", arch="x86_64", image_ref="builtin:busybox",
                        image_digest="sha256:abc", base_disk=fc.rootfs, kernel=fc.kernel.image,
                        initrd=fc.kernel.initrd, memory_mib=128, cpus=1, disk_bytes=fc.rootfs.stat().st_size)


def _saved_entry(fc: FC, client: SupervisorClient) -> warm.WarmKey:
    """A guestless VM saved as the warm entry of ``_key``, then killed (what a cold run leaves)."""
    fc.ok("start", "boot")
    fc.ok("pause", "boot")  # started with readiness "vmm": the supervisor snapshots it once paused
    key = _key(fc)
    warm.save_booted(client, "boot", key)
    fc.ok("kill", "boot")
    assert warm.lookup(key) is not None, "the entry was not saved"
    return key


def _plan(fc: FC, name: str) -> BootPlan:
    """What ``run`` plans (the guest init is in the initramfs already: unused here)."""
    return BootPlan(backend="firecracker", name=name, state_root=fc.state, image_ref="builtin:busybox",
                    kernel_path=fc.kernel.image, initrd_path=fc.kernel.initrd, guest_init=fc.kernel.initrd,
                    memory_mib=128, cpus=1, boot_timeout=20.0)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def test_one_entry_serves_restores_at_once_and_stays_whole(fc: FC, client: SupervisorClient,
                                                           tmp_path: Path) -> None:
    key = _saved_entry(fc, client)
    snap = warm.lookup(key)
    assert snap is not None and snap.doc["vmmVersion"] == VERSION and snap.doc["backend"] == "firecracker"
    assert sorted(p.name for p in key.path.iterdir()) == ["disk", "memory", "snapshot.json", "state"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in key.path.iterdir())
    memory = key.path / "memory"
    before = _sha256(memory), memory.stat().st_mtime_ns
    procs = []
    try:
        for run in ("run-a", "run-b"):  # what two warm runs do: their own disk copy, one memory file
            there = tmp_path / run
            there.mkdir()
            copy_disk(key.path / "disk", tmp_path / f"{run}.ext4")
            os.symlink(tmp_path / f"{run}.ext4", there / "drive-rootfs")
            os.symlink(fc.runtime_dir("boot") / "config.disk", there / "drive-config")
            proc, api = _bare_firecracker(fc.binary, there)
            procs.append(proc)
            snapshot.load(api, key.path)
            assert api.instance_info().state == "Running"
        for proc in procs:
            maps = Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
            private = [line for line in maps if line.endswith(str(memory))]
            assert private and all(line.split()[1][3] == "p" for line in private), private
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert (_sha256(memory), memory.stat().st_mtime_ns) == before  # never written through
    assert warm.lookup(key) is not None  # still whole for the next run


@pytest.mark.parametrize("damage", ["another firecracker", "junk state"])
def test_a_refused_or_broken_entry_is_dropped_and_the_run_boots_cold(fc: FC, client: SupervisorClient,
                                                                    damage: str) -> None:
    key = _saved_entry(fc, client)
    doc = json.loads((key.path / "snapshot.json").read_text())
    if damage == "another firecracker":  # refused before anything starts
        doc["vmmVersion"] = "Firecracker v1.11.0"
    else:  # the manifest vouches for it: only firecracker can tell
        junk = b"not a firecracker state file\n" * 64
        (key.path / "state").write_bytes(junk)
        doc["files"]["state"]["sha256"] = "sha256:" + hashlib.sha256(junk).hexdigest()
    (key.path / "snapshot.json").write_text(json.dumps(doc))
    assert warm.lookup(key) is not None  # whole as far as the host can tell

    plan = _plan(fc, "run-1")
    assert _restore(client, plan, key, boot_timeout=20.0) is False
    assert not key.path.exists(), "the entry was not removed"
    assert fc.leftovers() == []
    if damage == "junk state":  # firecracker's own reason, in its log
        assert "Load snapshot error" in (fc.runtime_dir("run-1") / "vmm.log").read_text()
    else:  # refused before any firecracker started
        assert not (fc.runtime_dir("run-1") / "vmm.log").exists()
    # what run does next: a cold boot of the same workspace (guestless here: readiness "vmm")
    fc.ok("start", "run-1", rootfsPath=str(plan.disk_path))
    fc.ok("kill", "run-1", rootfsPath=str(plan.disk_path))
