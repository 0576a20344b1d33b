"""Boot snapshot bookkeeping that needs no guest: keys, racing savers, damage, pruning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from microagent.images import store
from microagent.workspace import warm

HEX = "ab" * 32


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    disks = store.disks_dir(tmp_path)
    disks.mkdir(parents=True)
    for name in ("Image", "initrd.cpio"):
        (tmp_path / name).write_bytes(name.encode())
    (disks / f"{HEX}-linux-amd64.ext4").write_bytes(b"disk")
    return {"backend": "qemu", "arch": "x86_64", "image_ref": "builtin:busybox", "image_digest": "sha256:abc",
            "base_disk": disks / f"{HEX}-linux-amd64.ext4", "kernel": tmp_path / "Image",
            "initrd": tmp_path / "initrd.cpio", "memory_mib": 256, "cpus": 1, "disk_bytes": 4}


def _publish(key: warm.WarmKey) -> None:
    with warm.saving(key) as stage:
        assert stage is not None
        for name in ("state", "memory", "disk"):
            (stage / name).write_bytes(name.encode())
        warm.publish(stage, key, {"vmm": "qemu", "vmmVersion": "QEMU 7.2", "layout": "-M microvm"})


def test_key_follows_every_input(tmp_path: Path, inputs: dict) -> None:
    key = warm.key_for(tmp_path, **inputs)
    assert warm.key_for(tmp_path, **inputs) == key
    assert key.group == HEX + "-linux-amd64"
    assert warm.key_for(tmp_path, **{**inputs, "memory_mib": 512}).key != key.key
    assert warm.key_for(tmp_path, **inputs, env=("A=1",)).key != key.key
    replacement = tmp_path / "Image.new"
    replacement.write_bytes(b"Image")  # the same bytes in a new file
    os.replace(replacement, inputs["kernel"])
    assert warm.key_for(tmp_path, **inputs).key != key.key


def test_published_entry_is_found_private_and_used_once_saved(tmp_path: Path, inputs: dict) -> None:
    key = warm.key_for(tmp_path, **inputs)
    assert warm.lookup(key) is None
    _publish(key)
    snap = warm.lookup(key)
    assert snap is not None and snap.path == key.path
    assert snap.doc["inputs"] == key.inputs and snap.doc["vmmVersion"] == "QEMU 7.2"
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in key.path.iterdir())
    spec = warm.restore_spec(snap)
    assert spec.private and spec.vmmVersion == "QEMU 7.2" and spec.layout == "-M microvm"
    with warm.saving(key) as stage:
        assert stage is None  # there already: nobody saves it again


def test_racing_savers_do_not_both_write(tmp_path: Path, inputs: dict) -> None:
    key = warm.key_for(tmp_path, **inputs)
    with warm.saving(key) as first:
        assert first is not None
        with warm.saving(key) as second:
            assert second is None  # the lock is held: the second run just does not save
        (first / "state").write_bytes(b"s")
    assert not first.exists()  # an unpublished stage is removed
    assert warm.lookup(key) is None
    assert [p.name for p in key.path.parent.iterdir() if not p.name.endswith(".lock")] == []


def test_a_damaged_entry_is_dropped(tmp_path: Path, inputs: dict) -> None:
    key = warm.key_for(tmp_path, **inputs)
    _publish(key)
    (key.path / "state").write_bytes(b"tampered")
    assert warm.lookup(key) is None
    assert not key.path.exists()
    _publish(key)
    (key.path / "snapshot.json").write_text("{not json")
    assert warm.lookup(key) is None and not key.path.exists()


def test_image_prune_removes_the_entries_of_a_gone_base_disk(tmp_path: Path, inputs: dict) -> None:
    key = warm.key_for(tmp_path, **inputs)
    _publish(key)
    store.prune(tmp_path)  # no image record names the base disk: it goes, and its entries with it
    assert not inputs["base_disk"].exists()
    assert not key.path.parent.exists()
