"""The image cache index: ``<state>/images/index.json``.

Owns the records of pulled images — ``{reference, digest, platform, config,
layers, size, pulled_at, last_used_at}`` keyed by normalised reference and
platform — and the cache's housekeeping (``list``, ``remove``, ``prune``).

Concurrency: the index is rewritten atomically (temp file + ``rename``) under
an exclusive ``flock`` on ``index.lock``.  Pulls hold a *shared* lock on
``gc.lock`` for their whole duration and ``prune`` takes it exclusively, so a
prune never deletes blobs a running pull has fetched but not yet recorded.

Layout under ``<state>/images/``::

    index.json                     this module
    blobs/sha256/<hex>             :mod:`.blobs`
    disks/<manifest-hex>-<os>-<arch>.ext4   base disks (the rootfs builder)
    warm/<base disk stem>/<key>/   boot snapshots (microagent.workspace.warm)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from msgspec import Struct, field

from microagent.errors import NotFound, Permanent
from microagent.fsutil import atomic_write
from microagent.images.blobs import BlobStore
from microagent.images.manifest import config_from_json, config_to_json
from microagent.images.model import ImageConfig, Layer, Platform, PulledImage

INDEX_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def images_root(state_root: Path) -> Path:
    return Path(state_root) / "images"


def disks_dir(state_root: Path) -> Path:
    return images_root(state_root) / "disks"


def warm_dir(state_root: Path) -> Path:
    """Boot snapshots (microagent.workspace.warm), one directory per base disk's file stem."""
    return images_root(state_root) / "warm"


def _prune_warm(state_root: Path) -> int:
    """Remove the boot snapshots of every base disk that is gone; returns bytes freed."""
    import shutil

    freed = 0
    base = warm_dir(state_root)
    for group in base.iterdir() if base.is_dir() else ():
        if group.is_dir() and not (disks_dir(state_root) / f"{group.name}.ext4").exists():
            freed += sum(p.stat().st_blocks * 512 for p in group.rglob("*") if p.is_file())
            shutil.rmtree(group, ignore_errors=True)
    return freed


class ImageRecord(Struct):
    """One pulled image as the index records it."""

    reference: str
    digest: str
    platform: Platform
    config: ImageConfig
    config_digest: str
    layers: tuple[tuple[str, str, int], ...]  # (digest, mediaType, size)
    source: str = "registry"
    index_digest: str = ""  # the image index / manifest list the reference resolved through
    pulled_at: str = field(default_factory=_now)
    last_used_at: str = field(default_factory=_now)

    @property
    def size(self) -> int:
        return sum(size for _, _, size in self.layers)

    def blobs(self) -> set[str]:
        """Every blob this record needs."""
        out = {self.digest, self.config_digest, *(d for d, _, _ in self.layers)}
        if self.index_digest:
            out.add(self.index_digest)
        out.discard("")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "platform": {"os": self.platform.os, "architecture": self.platform.architecture,
                         **({"variant": self.platform.variant} if self.platform.variant else {})},
            "config": config_to_json(self.config),
            "configDigest": self.config_digest,
            "layers": [{"digest": d, "mediaType": m, "size": s} for d, m, s in self.layers],
            "size": self.size,
            "source": self.source,
            "indexDigest": self.index_digest,
            "pulledAt": self.pulled_at,
            "lastUsedAt": self.last_used_at,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "ImageRecord":
        plat = doc.get("platform") or {}
        return cls(
            reference=str(doc["reference"]),
            digest=str(doc["digest"]),
            platform=Platform(architecture=str(plat.get("architecture", "")), os=str(plat.get("os", "linux")),
                              variant=str(plat.get("variant", ""))),
            config=config_from_json(doc.get("config") or {}),
            config_digest=str(doc.get("configDigest", "")),
            layers=tuple((str(l["digest"]), str(l["mediaType"]), int(l["size"])) for l in doc.get("layers", [])),
            source=str(doc.get("source", "registry")),
            index_digest=str(doc.get("indexDigest", "")),
            pulled_at=str(doc.get("pulledAt", "")),
            last_used_at=str(doc.get("lastUsedAt", "")),
        )

    def to_pulled(self, store: BlobStore) -> PulledImage:
        """The :class:`PulledImage` this record describes (blobs are not re-checked here)."""
        return PulledImage(
            reference=self.reference, digest=self.digest, platform=self.platform, config=self.config,
            layers=tuple(Layer(d, m, s, store.path(d)) for d, m, s in self.layers),
            config_digest=self.config_digest, source=self.source,
        )

    def disk_prefix(self) -> str:
        return self.digest.split(":", 1)[1]


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def pull_guard(state_root: Path) -> contextlib.AbstractContextManager[None]:
    """Held (shared) by a pull for its whole duration; ``prune`` holds it exclusively."""
    return _flock(images_root(state_root) / "gc.lock", fcntl.LOCK_SH)


def _index_lock(state_root: Path) -> contextlib.AbstractContextManager[None]:
    return _flock(images_root(state_root) / "index.lock", fcntl.LOCK_EX)


def _index_path(state_root: Path) -> Path:
    return images_root(state_root) / "index.json"


def _load(state_root: Path) -> list[ImageRecord]:
    path = _index_path(state_root)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise Permanent(f"the image index {path} is corrupt", "move it away; images will be pulled again") from exc
    try:
        return [ImageRecord.from_json(r) for r in doc.get("images", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise Permanent(f"the image index {path} has a malformed record: {exc}",
                        "move it away; images will be pulled again") from exc


def _save(state_root: Path, records: list[ImageRecord]) -> None:
    path = _index_path(state_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": INDEX_VERSION, "images": [r.to_json() for r in sorted(records, key=lambda r: r.reference)]}
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())


def list_images(state_root: Path) -> list[ImageRecord]:
    """All records, sorted by reference."""
    return sorted(_load(state_root), key=lambda r: (r.reference, str(r.platform)))


def _same_platform(a: Platform, b: Platform) -> bool:
    return a.os == b.os and a.architecture == b.architecture and (not b.variant or a.variant == b.variant)


def lookup(state_root: Path, reference: str, platform: Platform) -> ImageRecord | None:
    """The record of a normalised reference for a platform, if pulled before."""
    for rec in _load(state_root):
        if rec.reference == reference and _same_platform(rec.platform, platform):
            return rec
    return None


def record(state_root: Path, rec: ImageRecord) -> None:
    """Insert or replace the record for ``(rec.reference, rec.platform)``."""
    with _index_lock(state_root):
        records = [r for r in _load(state_root)
                   if not (r.reference == rec.reference and _same_platform(r.platform, rec.platform))]
        records.append(rec)
        _save(state_root, records)


#: ``last_used_at`` is rewritten at most this often: each write of the index (two fsyncs)
#: cost every run of a cached image a few ms, for a time only ``image ls`` shows.
TOUCH_INTERVAL_S = 60


def touch(state_root: Path, reference: str, platform: Platform) -> None:
    """Set ``last_used_at`` of a record to now (no-op when absent, or when it was set
    less than :data:`TOUCH_INTERVAL_S` ago)."""
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - TOUCH_INTERVAL_S))
    if any(r.reference == reference and _same_platform(r.platform, platform) and r.last_used_at > recent
           for r in _load(state_root)):  # the index is replaced atomically: readable without the lock
        return
    with _index_lock(state_root):
        records = _load(state_root)
        for r in records:
            if r.reference == reference and _same_platform(r.platform, platform):
                r.last_used_at = _now()
                _save(state_root, records)
                return


def _matches(rec: ImageRecord, query: str) -> bool:
    if query in (rec.reference, rec.digest, rec.digest.split(":", 1)[-1]):
        return True
    if len(query) >= 12 and re.fullmatch(r"(sha256:)?[0-9a-f]+", query):
        return rec.digest.split(":", 1)[1].startswith(query.removeprefix("sha256:"))
    try:
        from microagent.images.reference import normalize

        return normalize(query) == rec.reference
    except Permanent:
        return False


def remove(state_root: Path, query: str) -> tuple[list[ImageRecord], int]:
    """Remove the records ``query`` names (reference, digest or ≥12-hex digest prefix),
    then collect what no record needs any more.

    :returns: the removed records and the bytes freed.
    :raises NotFound: no record matches.
    """
    with _index_lock(state_root):
        records = _load(state_root)
        gone = [r for r in records if _matches(r, query)]
        if not gone:
            raise NotFound(f"image {query!r} is not in the cache", "see 'microagent image ls'")
        _save(state_root, [r for r in records if r not in gone])
    return gone, prune(state_root)["freed"]


def prune(state_root: Path) -> dict[str, Any]:
    """Delete blobs no record references, base disks whose record is gone, and temp leftovers.

    Waits for running pulls to finish (exclusive ``gc.lock``).

    :returns: ``{"blobs": n, "disks": n, "freed": bytes}``.
    """
    store = BlobStore.for_state(state_root)
    blobs = disks = freed = 0
    with _flock(images_root(state_root) / "gc.lock", fcntl.LOCK_EX):
        with _index_lock(state_root):
            records = _load(state_root)
        keep: set[str] = set()
        for rec in records:
            keep |= rec.blobs()
        for digest in list(store.digests()):
            if digest not in keep:
                freed += store.remove(digest)
                blobs += 1
        freed += store.clear_tmp()
        live = {rec.disk_prefix() for rec in records}
        ddir = disks_dir(state_root)
        if ddir.is_dir():
            for entry in ddir.iterdir():
                prefix = entry.name.split("-", 1)[0].split(".", 1)[0]
                if _HEX64.fullmatch(prefix) and prefix not in live and entry.is_file():
                    freed += entry.stat().st_size
                    entry.unlink()
                    disks += 1
        freed += _prune_warm(state_root)
    return {"blobs": blobs, "disks": disks, "freed": freed}
