"""The image index: records, list/remove/prune, disks of removed images."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from microagent.errors import NotFound
from microagent.images import store as index
from microagent.images.blobs import BlobStore
from microagent.images.model import ImageConfig, Platform

AMD64 = Platform("amd64")


def _record(state: Path, ref: str, payload: bytes) -> index.ImageRecord:
    blobs = BlobStore.for_state(state)
    manifest = blobs.put_bytes(b"manifest-" + payload)
    config = blobs.put_bytes(b"config-" + payload)
    shared = blobs.put_bytes(b"shared-layer")
    own = blobs.put_bytes(b"layer-" + payload)
    rec = index.ImageRecord(reference=ref, digest=manifest, platform=AMD64,
                            config=ImageConfig(cmd=("/bin/sh",), env=("A=1",), user="1000"),
                            config_digest=config,
                            layers=((shared, "application/vnd.oci.image.layer.v1.tar", 12),
                                    (own, "application/vnd.oci.image.layer.v1.tar+gzip", 6 + len(payload))))
    index.record(state, rec)
    return rec


def test_record_lookup_roundtrip(tmp_path: Path) -> None:
    rec = _record(tmp_path, "docker.io/library/a:1", b"a")
    got = index.lookup(tmp_path, "docker.io/library/a:1", AMD64)
    assert got is not None and got.to_json() == rec.to_json()
    assert index.lookup(tmp_path, "docker.io/library/a:1", Platform("arm64")) is None
    doc = json.loads((tmp_path / "images" / "index.json").read_text())
    assert doc["version"] == 1
    entry = doc["images"][0]
    assert set(entry) >= {"reference", "digest", "platform", "config", "layers", "size", "pulledAt", "lastUsedAt"}
    assert entry["config"] == {"Cmd": ["/bin/sh"], "Env": ["A=1"], "User": "1000"}
    pulled = got.to_pulled(BlobStore.for_state(tmp_path))
    assert pulled.layers[0].path.read_bytes() == b"shared-layer"
    # re-recording the same reference replaces it
    _record(tmp_path, "docker.io/library/a:1", b"a2")
    assert len(index.list_images(tmp_path)) == 1


def test_remove_collects_only_unshared_blobs_and_disks(tmp_path: Path) -> None:
    a = _record(tmp_path, "docker.io/library/a:1", b"a")
    b = _record(tmp_path, "docker.io/library/b:1", b"b")
    disks = tmp_path / "images" / "disks"
    disks.mkdir(parents=True)
    disk_a = disks / f"{a.digest.split(':')[1]}-linux-amd64.ext4"
    disk_b = disks / f"{b.digest.split(':')[1]}-linux-amd64.ext4"
    other = disks / "README"
    for p in (disk_a, disk_b, other):
        p.write_bytes(b"disk")
    gone, freed = index.remove(tmp_path, "a:1")  # normalised like the CLI
    assert [r.reference for r in gone] == ["docker.io/library/a:1"] and freed > 0
    blobs = set(BlobStore.for_state(tmp_path).digests())
    assert blobs == b.blobs()  # the shared layer survives, a's own blobs are gone
    assert not disk_a.exists() and disk_b.exists() and other.exists()
    with pytest.raises(NotFound, match="not in the cache"):
        index.remove(tmp_path, "a:1")
    gone, _ = index.remove(tmp_path, b.digest[:19])
    assert gone[0].reference == "docker.io/library/b:1"
    assert list(BlobStore.for_state(tmp_path).digests()) == [] and not disk_b.exists()


def test_prune(tmp_path: Path) -> None:
    keep = _record(tmp_path, "docker.io/library/keep:1", b"k")
    store = BlobStore.for_state(tmp_path)
    orphan = store.put_bytes(b"orphan")
    store.tmp_dir.mkdir(exist_ok=True)
    (store.tmp_dir / "leftover.part").write_bytes(b"x")
    result = index.prune(tmp_path)
    assert result["blobs"] == 1 and result["freed"] == len(b"orphan") + 1
    assert orphan not in set(store.digests()) and set(store.digests()) == keep.blobs()


def test_concurrent_records_are_not_lost(tmp_path: Path) -> None:
    def add(i: int) -> None:
        _record(tmp_path, f"docker.io/library/img{i}:1", str(i).encode())

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(index.list_images(tmp_path)) == 12


def test_touch_rewrites_the_index_at_most_once_a_minute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _record(tmp_path, "docker.io/library/a:1", b"a")
    path = tmp_path / "images" / "index.json"
    now = [1_800_000_000.0]
    monkeypatch.setattr(index.time, "time", lambda: now[0])
    monkeypatch.setattr(index, "_now", lambda: index.time.strftime("%Y-%m-%dT%H:%M:%SZ", index.time.gmtime(now[0])))
    index.touch(tmp_path, "docker.io/library/a:1", AMD64)
    first = path.stat().st_ino, index.lookup(tmp_path, "docker.io/library/a:1", AMD64).last_used_at
    assert first[1] == "2027-01-15T08:00:00Z"
    now[0] += index.TOUCH_INTERVAL_S - 1  # within the interval: the index is not written again
    index.touch(tmp_path, "docker.io/library/a:1", AMD64)
    assert (path.stat().st_ino, index.lookup(tmp_path, "docker.io/library/a:1", AMD64).last_used_at) == first
    now[0] += 2
    index.touch(tmp_path, "docker.io/library/a:1", AMD64)
    assert index.lookup(tmp_path, "docker.io/library/a:1", AMD64).last_used_at == "2027-01-15T08:01:01Z"
