"""``docker save`` archives (``docker-archive:PATH[:REF]``).

Owns reading the two layouts ``docker save`` has written over the years:

* the legacy layout: ``manifest.json`` (``[{"Config": "<hex>.json",
  "RepoTags": [...], "Layers": ["<id>/layer.tar", ...]}]``), a config named
  by its sha256, and uncompressed layer tars.  There is no registry manifest,
  so one is synthesised (an OCI manifest over the same config and layers);
  the config is verified against its file name and every layer against the
  config's ``rootfs.diff_ids``.
* Docker ≥ 25: an OCI image layout inside the tar (``oci-layout``,
  ``index.json``, ``blobs/sha256/…``) next to the same ``manifest.json``;
  read through :mod:`.layout` like any OCI layout.

Blobs are copied into the blob store, verified there before they become visible.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

from microagent.errors import NotFound, Permanent
from microagent.images.blobs import BlobStore, DigestMismatch, PullProgress, digest_of
from microagent.images.manifest import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Index,
    parse_config,
)
from microagent.images.limits import Limits, resolve
from microagent.images.reference import ImageReference, parse_image_reference
from microagent.images.tarstream import BoundedTarInfo

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _clean(name: str) -> str:
    name = posixpath.normpath(name.lstrip("/"))
    return "" if name == "." else name


class TarSource:
    """Files of a tarball, by normalised member name (a :class:`~.layout.BlobSource`)."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.path = Path(path)
        self.description = f"docker archive {self.path}"
        self.limits = resolve(limits)
        if not self.path.is_file():
            raise NotFound(f"docker archive {self.path} does not exist", "give the path of a 'docker save' tarball")
        try:
            self._tar = tarfile.open(self.path, "r:*", tarinfo=BoundedTarInfo)
        except Exception as exc:
            raise Permanent(f"{self.path} is not a readable tar archive: {exc}",
                            "give a tarball written by 'docker save'") from exc
        try:
            self._members = {}
            for count, member in enumerate(self._tar, 1):
                if count > self.limits.entries:
                    raise self.limits.exceeded("entries", f"{self.description}: its number of entries")
                if member.isfile():
                    self._members[_clean(member.name)] = member
        except Permanent:
            self._tar.close()
            raise
        except Exception as exc:
            self._tar.close()
            raise Permanent(f"{self.path} is not a readable tar archive: {exc}",
                            "give a tarball written by 'docker save'") from exc

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> "TarSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str) -> bool:
        return _clean(name) in self._members

    def size(self, name: str) -> int:
        return self._member(name).size

    def _member(self, name: str) -> tarfile.TarInfo:
        try:
            return self._members[_clean(name)]
        except KeyError:
            raise NotFound(f"{self.description} is missing {name}",
                           "the archive is incomplete; re-create it with 'docker save'") from None

    def open_file(self, name: str) -> IO[bytes]:
        fh = self._tar.extractfile(self._member(name))
        if fh is None:
            raise Permanent(f"{self.description}: {name} is not a regular file", "re-create the archive")
        return fh


@dataclass(frozen=True)
class ArchiveEntry:
    """One image of ``manifest.json``."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def read_entries(src: TarSource) -> list[ArchiveEntry]:
    """The images ``manifest.json`` lists.

    :raises Permanent: it is missing or malformed.
    """
    if not src.has("manifest.json"):
        raise Permanent(f"{src.description} has no manifest.json: it is not a 'docker save' archive",
                        "create it with 'docker save IMAGE -o FILE', or use oci:DIR for an OCI layout")
    with src.open_file("manifest.json") as fh:
        raw = src.limits.read_document(fh, f"{src.description}: manifest.json")
        try:
            doc = json.loads(raw)
            return [ArchiveEntry(str(e["Config"]), tuple(str(t) for t in (e.get("RepoTags") or ())),
                                 tuple(str(p) for p in e["Layers"])) for e in doc]
        except (ValueError, KeyError, TypeError) as exc:
            raise Permanent(f"{src.description}: manifest.json is malformed ({exc})",
                            "re-create the archive with 'docker save'") from exc


def _normalised_tags(entry: ArchiveEntry) -> set[str]:
    out = set()
    for tag in entry.repo_tags:
        try:
            out.add(str(parse_image_reference(tag)))
        except Permanent:
            continue
    return out


def select_entry(src: TarSource, entries: list[ArchiveEntry], ref: ImageReference | None) -> ArchiveEntry:
    """The image ``ref`` names (or the only one when no ``ref``).

    :raises NotFound: naming the tags the archive has.
    """
    tags = sorted({t for e in entries for t in e.repo_tags})
    if ref is None:
        if len(entries) == 1:
            return entries[0]
        raise NotFound(f"{src.description} holds {len(entries)} images; say which one",
                       f"append :REF, one of: {', '.join(tags) or '(none are tagged)'}", available=tags)
    for entry in entries:
        if str(ref) in _normalised_tags(entry):
            return entry
    raise NotFound(f"{src.description} has no image tagged {ref}",
                   f"use one of: {', '.join(tags) or '(none are tagged)'}", available=tags)


def oci_index(src: TarSource) -> Index | None:
    """The OCI layout inside the archive (Docker ≥ 25), or ``None`` for a legacy archive."""
    if not (src.has("index.json") and src.has("oci-layout")):
        return None
    from microagent.images.layout import read_index

    return read_index(src)


def _sniff(fh: IO[bytes]) -> str:
    head = fh.read(4)
    if head.startswith(_GZIP_MAGIC):
        return OCI_LAYER_GZIP
    if head.startswith(_ZSTD_MAGIC):
        return OCI_LAYER_ZSTD
    return OCI_LAYER_TAR


def diff_id_of(path: Path, media_type: str) -> str:
    """sha256 of a layer's uncompressed tar stream (what ``rootfs.diff_ids`` records).

    :raises Permanent: the layer does not decompress.
    """
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        try:
            if media_type == OCI_LAYER_GZIP:
                d = zlib.decompressobj(wbits=31)
                while chunk := fh.read(1 << 20):
                    h.update(d.decompress(chunk))
                    while d.unused_data:  # concatenated gzip members
                        rest = d.unused_data
                        d = zlib.decompressobj(wbits=31)
                        h.update(d.decompress(rest))
                h.update(d.flush())
            elif media_type == OCI_LAYER_ZSTD:
                import zstandard

                reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
                while chunk := reader.read(1 << 20):
                    h.update(chunk)
            else:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except (zlib.error, OSError, ValueError) as exc:
            raise Permanent(f"layer {path.name} does not decompress: {exc}", "re-create the archive") from exc
        except Exception as exc:  # zstandard.ZstdError
            raise Permanent(f"layer {path.name} does not decompress: {exc}", "re-create the archive") from exc
    return f"sha256:{h.hexdigest()}"


def import_legacy(src: TarSource, entry: ArchiveEntry, store: BlobStore,
                  progress: PullProgress | None = None) -> tuple[bytes, str]:
    """Copy a ``manifest.json`` image into the store and synthesise its OCI manifest.

    :returns: ``(manifest bytes, manifest digest)``; the manifest is stored too.
    :raises DigestMismatch: the config does not match its name, or a layer
        does not match the config's ``diff_ids`` (the layer is not kept).
    """
    with src.open_file(entry.config) as fh:
        config_bytes = src.limits.read_document(fh, f"{src.description}: config {entry.config}")
    config_digest = digest_of(config_bytes)
    stem = posixpath.basename(entry.config).removesuffix(".json")
    named = stem if len(stem) == 64 else ""
    if posixpath.dirname(_clean(entry.config)) == "blobs/sha256":
        named = stem
    if named and f"sha256:{named}" != config_digest:
        raise DigestMismatch(f"{src.description}: config {entry.config} hashes to {config_digest}",
                             "the archive is corrupt; nothing was cached")
    _, _, diff_ids = parse_config(config_bytes, f"{src.description} config")
    if diff_ids and len(diff_ids) != len(entry.layers):
        raise Permanent(f"{src.description}: config lists {len(diff_ids)} layers, manifest.json {len(entry.layers)}",
                        "the archive is corrupt")
    store.put_bytes(config_bytes, config_digest)
    layers: list[Descriptor] = []
    for i, name in enumerate(entry.layers):
        with src.open_file(name) as fh:
            media_type = _sniff(fh)
        size = src.size(name)
        src.limits.check("blob_bytes", size, f"{src.description}: layer {name}")
        expected: str | None = None
        clean = _clean(name)
        if clean.startswith("blobs/sha256/"):
            expected = "sha256:" + clean.rsplit("/", 1)[1]
        elif media_type == OCI_LAYER_TAR and diff_ids:
            expected = diff_ids[i]
        label = expected or name
        if progress is not None:
            progress.on_layer_start(label, size)
        on_bytes: Callable[[int], None] | None = (lambda n, d=label: progress.on_bytes(d, n)) \
            if progress is not None else None
        existed = expected is not None and store.has(expected, size)
        if not existed:
            with src.open_file(name) as fh:
                path = store.write_file(expected, fh, size=size, on_bytes=on_bytes)
        else:
            path = store.path(expected)  # type: ignore[arg-type]
        digest = expected or f"sha256:{path.name}"
        if diff_ids and not (media_type == OCI_LAYER_TAR and digest == diff_ids[i]):
            actual = diff_id_of(path, media_type)
            if actual != diff_ids[i]:
                if not existed:
                    store.remove(digest)
                raise DigestMismatch(f"{src.description}: layer {name} does not match the config "
                                     f"(diff_id {actual}, config says {diff_ids[i]})",
                                     "the archive is corrupt; nothing was cached")
        if progress is not None:
            progress.on_layer_done(label)
        layers.append(Descriptor(media_type, digest, size))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [d.to_json() for d in layers],
    }
    data = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    return data, store.put_bytes(data)
