"""The ``createdBy`` tag: written only when set, read back, and absent from older manifests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from microagent.workspace.manifest import FileDigest, ImageRecord, Manifest, Verification, load_manifest, save_manifest


def _manifest(tmp_path: Path) -> Manifest:
    f = tmp_path / "kernel"
    f.write_bytes(b"kernel")
    d = FileDigest.of(f)
    return Manifest(name="ws", image=ImageRecord("builtin:busybox", "sha256:abc"), backend="qemu", profile="tiny",
                    memoryMiB=256, cpuCount=1, diskSizeMiB=512, createdAt="2026-01-01T00:00:00.000Z",
                    verification=Verification(d, d, d))


def test_tag_round_trips_and_untagged_manifests_stay_as_they_were(tmp_path: Path) -> None:
    plain = _manifest(tmp_path)
    path = save_manifest(tmp_path, plain)
    assert "createdBy" not in json.loads(path.read_text())  # old readers see the same document
    assert load_manifest(tmp_path, "ws").createdBy == ""

    tagged = dataclasses.replace(plain, createdBy="mcp")
    save_manifest(tmp_path, tagged)
    assert json.loads(path.read_text())["createdBy"] == "mcp"
    loaded = load_manifest(tmp_path, "ws")
    assert loaded == tagged and "createdBy" not in loaded.extra
