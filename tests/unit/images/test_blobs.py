"""The content-addressed blob store: verify before visible, safe under concurrency."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from microagent.errors import Permanent, ResourceExhausted
from microagent.images.blobs import BlobStore, DigestMismatch, SizeMismatch, digest_of


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_write_and_read(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"hello" * 1000
    path = store.write(_d(data), [data[:10], data[10:]], size=len(data))
    assert path == tmp_path / "blobs" / "sha256" / _d(data).split(":")[1]
    assert path.read_bytes() == data and store.has(_d(data)) and store.has(_d(data), len(data))
    assert not store.has(_d(data), 1)
    assert store.read_bytes(_d(data)) == data
    assert list(store.digests()) == [_d(data)]
    assert store.put_bytes(b"x") == _d(b"x")
    assert store.write(None, [b"computed"]) == store.path(_d(b"computed"))
    assert oct(path.stat().st_mode & 0o777) == oct(0o400)


def test_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(DigestMismatch) as err:
        store.write(_d(b"expected"), [b"something else"])
    assert isinstance(err.value, Permanent) and _d(b"expected") in err.value.message
    with pytest.raises(SizeMismatch, match="truncated"):
        store.write(_d(b"abc"), [b"ab"], size=3)
    with pytest.raises(SizeMismatch, match="larger"):
        store.write(_d(b"abc"), [b"abcd"], size=3)
    assert list(store.digests()) == []
    assert list(store.tmp_dir.iterdir()) == []


def test_interrupted_writer_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")

    def chunks():
        yield b"partial"
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        store.write(_d(b"partial data"), chunks())
    assert list(store.digests()) == [] and list(store.tmp_dir.iterdir()) == []


def test_corrupt_on_disk_blob_is_detected_on_read(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put_bytes(b'{"a": 1}')
    path = store.path(digest)
    path.chmod(0o644)
    path.write_bytes(b'{"a": 2}')
    with pytest.raises(DigestMismatch, match="corrupt"):
        store.read_bytes(digest)
    assert not path.exists()


def test_malformed_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    for bad in ("sha256:xyz", "md5:" + "a" * 32, "sha256:../../etc/passwd"):
        with pytest.raises(Permanent):
            store.path(bad)


def test_disk_full_is_resource_exhausted(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    store = BlobStore(tmp_path / "blobs")
    store.tmp_dir.mkdir(parents=True)
    import microagent.images.blobs as blobs_mod

    real_mkstemp = blobs_mod.tempfile.mkstemp

    def mkstemp_on_full_disk(*a: object, **k: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*a, **k)  # type: ignore[call-overload]
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd, name

    blobs_mod.tempfile.mkstemp = mkstemp_on_full_disk  # type: ignore[assignment]
    try:
        with pytest.raises(ResourceExhausted, match="no space"):
            store.write(_d(b"x" * 100), [b"x" * 100])
    finally:
        blobs_mod.tempfile.mkstemp = real_mkstemp  # type: ignore[assignment]
    assert list(store.tmp_dir.iterdir()) == []


_BIG = bytes(range(256)) * 8192  # 2 MiB


def _writer(root: str) -> str:
    store = BlobStore(Path(root))
    chunks = (_BIG[i:i + 4096] for i in range(0, len(_BIG), 4096))
    return str(store.write(digest_of(_BIG), chunks, size=len(_BIG)))


def test_concurrent_writers_threads(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _writer(str(store.root))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.path(digest_of(_BIG)).read_bytes() == _BIG
    assert list(store.tmp_dir.iterdir()) == []


def test_concurrent_writers_processes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map(_writer, [str(store.root)] * 8)
    assert len(set(paths)) == 1
    assert Path(paths[0]).read_bytes() == _BIG
    assert list(store.tmp_dir.iterdir()) == []


def test_remove_and_clear_tmp(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    digest = store.put_bytes(b"gone")
    assert store.remove(digest) == 4 and store.remove(digest) == 0
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    (store.tmp_dir / "stale.part").write_bytes(b"12345")
    assert store.clear_tmp() == 5
