"""workspace.json: round trip, atomic writes, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from microagent.errors import NotFound, Permanent
from microagent.workspace.manifest import (
    FileDigest,
    ImageRecord,
    Manifest,
    Verification,
    list_manifests,
    load_manifest,
    manifest_path,
    save_manifest,
)


def _manifest(tmp_path: Path, name: str = "ws1") -> Manifest:
    f = tmp_path / "kernel"
    f.write_bytes(b"kernel")
    d = FileDigest.of(f)
    return Manifest(name=name, image=ImageRecord("builtin:busybox", "sha256:abc", ("A=1",), "/w", "nobody"),
                    backend="qemu", profile="tiny", memoryMiB=256, cpuCount=1, diskSizeMiB=512,
                    createdAt="2026-01-01T00:00:00.000Z", verification=Verification(d, d, d),
                    env=("K=V",), network="isolated")


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    path = save_manifest(tmp_path, m)
    assert path == tmp_path / "workspaces" / "ws1" / "workspace.json"
    doc = json.loads(path.read_text())
    assert doc["schemaVersion"] == 1
    assert doc["resources"] == {"memoryMiB": 256, "cpuCount": 1, "diskSizeMiB": 512}
    assert doc["image"]["ref"] == "builtin:busybox" and doc["image"]["digest"] == "sha256:abc"
    assert doc["verification"]["init"]["sha256"].startswith("sha256:")
    assert doc["network"] == {"mode": "isolated", "publish": []} and doc["env"] == ["K=V"]
    assert load_manifest(tmp_path, "ws1") == m


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    save_manifest(tmp_path, m)
    save_manifest(tmp_path, m)
    assert sorted(os.listdir(manifest_path(tmp_path, "ws1").parent)) == ["workspace.json"]


def test_missing_workspace_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        load_manifest(tmp_path, "nope")
    assert "workspace nope does not exist" in info.value.message


def test_corrupt_manifest_is_permanent(tmp_path: Path) -> None:
    p = manifest_path(tmp_path, "bad")
    p.parent.mkdir(parents=True)
    p.write_text("{not json")
    with pytest.raises(Permanent):
        load_manifest(tmp_path, "bad")
    assert list_manifests(tmp_path) == []


def test_list_is_sorted(tmp_path: Path) -> None:
    for n in ("b", "a"):
        save_manifest(tmp_path, _manifest(tmp_path, n))
    assert [m.name for m in list_manifests(tmp_path)] == ["a", "b"]


def test_file_digest_is_prefixed_sha256(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert FileDigest.of(f).sha256 == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(NotFound):
        FileDigest.of(tmp_path / "missing")
