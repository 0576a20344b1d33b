"""Pulling an image into the local cache: reference → :class:`PulledImage`.

Owns the order of a pull and the cache policy; the HTTP is in
:mod:`.registry`, local sources in :mod:`.layout` / :mod:`.archive`, bytes in
:mod:`.blobs`, records in :mod:`.store`.  Extraction and the ext4 build
(:mod:`.rootfs` and friends) consume the result.

Cache policy (``policy=``; docs/images.md):

``missing`` (the default; what ``run`` uses)
    A reference pulled before for this platform is served from the index
    with **no registry request** as long as its blobs are all present; a
    digest reference whose blobs are present never needs the network either.
    Otherwise it is pulled.
``always`` (``microagent image pull``)
    A tag is re-resolved with one ``HEAD`` manifest request; when the digest
    it names is already complete in the cache nothing else is fetched.  A
    digest reference is immutable, so it still needs no request when cached.
``never``
    Only the cache; a reference not pulled before is :class:`NotFound`.

Local sources (``oci:``, ``docker-archive:``) are re-read on every pull
(no network is involved; blobs already in the store are not copied again),
except under ``never``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from microagent.errors import NotFound, Permanent, Unsupported
from microagent.images import store as index
from microagent.images.blobs import BlobStore, DigestMismatch, PullProgress, digest_of
from microagent.images.manifest import (
    INDEX_TYPES,
    OCI_MANIFEST,
    Descriptor,
    check_supported,
    parse_config,
    parse_index,
    parse_manifest,
    platform_for,
    select_platform,
    sniff_media_type,
)
from microagent.images.limits import Limits, resolve
from microagent.images.model import Platform, PulledImage
from microagent.images.untrusted import check_platform
from microagent.images.reference import (
    ArchiveReference,
    BuiltinReference,
    ImageReference,
    LayoutReference,
    parse_reference,
)

if TYPE_CHECKING:
    from microagent.images.layout import BlobSource
    from microagent.images.registry import RequestCounter

__all__ = ["POLICIES", "PullProgress", "pull", "cached"]

POLICIES = ("missing", "always", "never")

#: fetch a manifest/index by digest: returns its verified bytes (stored)
FetchDoc = Callable[[Descriptor], bytes]
#: make sure a blob is in the store, reporting bytes to the callback
FetchBlob = Callable[[Descriptor, Callable[[int], None] | None], None]


class _NotCached(Exception):
    """Raised by the offline fetchers: the cache cannot answer alone."""


def pull(ref: str, state_root: Path, *, architecture: str, progress: PullProgress | None = None,
         allow_insecure: bool = False, policy: str = "missing", variant: str = "",
         counter: RequestCounter | None = None, limits: Limits | None = None) -> PulledImage:
    """Make ``ref`` available in the local cache and describe it.

    :param ref: a registry reference, ``oci:PATH[:TAG]`` or ``docker-archive:PATH[:REF]``.
    :param architecture: the backend's architecture (``x86_64``/``aarch64`` or OCI spelling).
    :param progress: per-layer callbacks (``None``: silent).
    :param allow_insecure: plain HTTP to this registry even if not loopback.
    :param policy: ``missing`` | ``always`` | ``never`` (see the module docstring).
    :param counter: counts registry HTTP requests made (for tests and stats).
    :param limits: document and blob size caps (default: :meth:`~.limits.Limits.from_env`).
    :raises NotFound: unknown image/tag, no manifest for the platform, or not
        cached under ``never``.
    :raises Permanent: invalid reference, unsupported media type, corrupt
        content (:class:`~.blobs.DigestMismatch`; nothing is cached), a
        document or blob over its size limit, or a hostile platform string.
    :raises PolicyDenied: the registry needs credentials we lack or rejects ours.
    :raises Transient: the registry is unreachable or failing (after retries).
    :raises ResourceExhausted: the disk filled up.
    :raises Unsupported: ``builtin:`` references (see :mod:`.builtin`).
    """
    if policy not in POLICIES:
        raise Permanent(f"unknown pull policy {policy!r}", f"use one of: {', '.join(POLICIES)}")
    parsed = parse_reference(ref)
    want = check_platform(platform_for(architecture, variant), "requested platform", required=True)
    limits = resolve(limits)
    state_root = Path(state_root)
    store = BlobStore.for_state(state_root)
    if isinstance(parsed, BuiltinReference):
        raise Unsupported(f"{parsed} is a built-in image and is not pulled",
                          "built-in images are built by microagent itself; run it directly")
    with index.pull_guard(state_root):
        if policy != "always" or (isinstance(parsed, ImageReference) and parsed.digest):
            hit = _cached(parsed, state_root, store, want, limits)
            if hit is not None:
                return hit
        if policy == "never":
            raise NotFound(f"image {parsed} is not in the cache for {want}",
                           f"pull it first: microagent image pull {ref}")
        if isinstance(parsed, ImageReference):
            return _pull_registry(parsed, state_root, store, want, progress, allow_insecure, counter, limits)
        if isinstance(parsed, LayoutReference):
            return _pull_layout(parsed, state_root, store, want, progress, limits)
        return _pull_archive(parsed, state_root, store, want, progress, limits)


def cached(ref: str, state_root: Path, *, architecture: str, variant: str = "") -> PulledImage | None:
    """The cached image for ``ref`` without any I/O beyond the cache, or ``None``."""
    try:
        return pull(ref, state_root, architecture=architecture, variant=variant, policy="never")
    except NotFound:
        return None


# -- the cache ------------------------------------------------------------------


def _cached(parsed: ImageReference | LayoutReference | ArchiveReference, state_root: Path, store: BlobStore,
            want: Platform, limits: Limits) -> PulledImage | None:
    """Serve from the cache alone: a recorded reference, or a digest whose blobs are all here."""
    ref = str(parsed)
    rec = index.lookup(state_root, ref, want)
    if rec is not None and all(store.has(d) for d in rec.blobs()):
        index.touch(state_root, ref, want)
        return rec.to_pulled(store)
    if isinstance(parsed, ImageReference) and parsed.digest:
        try:
            return _complete(ref, parsed.digest, None, want, _offline_doc(store, limits), _offline_blob(store),
                             store, state_root, None, "registry", str(parsed), limits)
        except _NotCached:
            return None
    return None


def _offline_doc(store: BlobStore, limits: Limits) -> FetchDoc:
    def fetch(desc: Descriptor) -> bytes:
        if not store.has(desc.digest):
            raise _NotCached(desc.digest)
        return store.read_bytes(desc.digest, max_bytes=limits.document_bytes)

    return fetch


def _offline_blob(store: BlobStore) -> FetchBlob:
    def fetch(desc: Descriptor, on_bytes: Callable[[int], None] | None) -> None:
        if not store.has(desc.digest, desc.size):
            raise _NotCached(desc.digest)

    return fetch


# -- the common walk: index → manifest → config → layers -------------------------


def _complete(ref: str, top_digest: str, top_bytes: bytes | None, want: Platform, fetch_doc: FetchDoc,
              fetch_blob: FetchBlob, store: BlobStore, state_root: Path, progress: PullProgress | None,
              source: str, what: str, limits: Limits, top_media_type: str = "") -> PulledImage:
    """Walk from the top document to the layers, fetch what is missing, record the image.

    Every descriptor's size is checked against its limit before it is fetched.
    """
    if top_bytes is None:
        top_bytes = fetch_doc(Descriptor(top_media_type, top_digest, -1))
    media_type = sniff_media_type(top_bytes, top_media_type)
    check_supported(media_type, what)
    index_digest = ""
    manifest_digest, manifest_bytes = top_digest, top_bytes
    depth = 0
    while media_type in INDEX_TYPES:
        depth += 1
        if depth > 2:
            raise Permanent(f"{what}: image indexes nest too deeply", "the image is malformed")
        idx = parse_index(manifest_bytes, f"image index of {what}")
        desc = select_platform(idx, want, what)
        limits.check("document_bytes", desc.size, f"manifest {desc.digest} of {what}")
        store.put_bytes(manifest_bytes, manifest_digest)
        index_digest = index_digest or manifest_digest
        manifest_bytes = fetch_doc(desc)
        manifest_digest = desc.digest
        media_type = sniff_media_type(manifest_bytes, desc.media_type)
        check_supported(media_type, what)
    manifest = parse_manifest(manifest_bytes, f"manifest of {what}")
    limits.check("document_bytes", manifest.config.size, f"config {manifest.config.digest} of {what}")
    for layer in manifest.layers:
        limits.check("blob_bytes", layer.size, f"layer blob {layer.digest} of {what}")
    fetch_blob(manifest.config, None)
    config_bytes = store.read_bytes(manifest.config.digest, max_bytes=limits.document_bytes)
    config, platform, _diff_ids = parse_config(config_bytes, f"config of {what}")
    if platform.architecture and (platform.architecture != want.architecture or
                                  (platform.os and platform.os != want.os)):
        raise NotFound(f"{what} has no image for platform {want}; it has: {platform}",
                       "pick an image built for this architecture, or use a backend/host of that platform",
                       wanted=str(want), available=[str(platform)])
    for layer in manifest.layers:
        if store.has(layer.digest, layer.size):
            if progress is not None:
                progress.on_layer_start(layer.digest, layer.size)
                progress.on_bytes(layer.digest, layer.size)
                progress.on_layer_done(layer.digest)
            continue
        if progress is not None:
            progress.on_layer_start(layer.digest, layer.size)
            fetch_blob(layer, lambda n, d=layer.digest: progress.on_bytes(d, n))  # type: ignore[misc]
            progress.on_layer_done(layer.digest)
        else:
            fetch_blob(layer, None)
    store.put_bytes(manifest_bytes, manifest_digest)
    rec = index.ImageRecord(
        reference=ref, digest=manifest_digest,
        platform=Platform(architecture=platform.architecture or want.architecture, os=platform.os or want.os,
                          variant=platform.variant or want.variant),
        config=config, config_digest=manifest.config.digest,
        layers=tuple((l.digest, l.media_type, l.size) for l in manifest.layers),
        source=source, index_digest=index_digest,
    )
    index.record(state_root, rec)
    return rec.to_pulled(store)


# -- registry -------------------------------------------------------------------


def _pull_registry(ref: ImageReference, state_root: Path, store: BlobStore, want: Platform,
                   progress: PullProgress | None, allow_insecure: bool,
                   counter: RequestCounter | None, limits: Limits) -> PulledImage:
    from microagent.images.registry import client_for  # urllib3: only when a registry is involved

    client = client_for(ref.registry, ref.api_host, ref.host, state_root=state_root,
                        allow_insecure=allow_insecure, counter=counter, limits=limits)
    repo = ref.repository
    what = str(ref)

    def fetch_doc(desc: Descriptor) -> bytes:
        if store.has(desc.digest):
            return store.read_bytes(desc.digest, max_bytes=limits.document_bytes)
        body, content_type, _ = client.get_manifest(repo, desc.digest)
        _verify_doc(body, desc.digest, what)
        store.put_bytes(body, desc.digest)
        return body

    def fetch_blob(desc: Descriptor, on_bytes: Callable[[int], None] | None) -> None:
        if not store.has(desc.digest, desc.size):
            client.fetch_blob(repo, desc.digest, desc.size, store, on_bytes)

    if ref.digest:
        return _complete(str(ref), ref.digest, None, want, fetch_doc, fetch_blob, store, state_root, progress,
                         "registry", what, limits)
    tag = ref.tag or "latest"
    if index.lookup(state_root, str(ref), want) is not None:
        # re-resolve cheaply: HEAD names the digest; if it is complete here, no more requests
        head_digest = client.head_manifest(repo, tag)
        if head_digest:
            try:
                return _complete(str(ref), head_digest, None, want, _offline_doc(store, limits),
                                 _offline_blob(store), store, state_root, progress, "registry", what, limits)
            except _NotCached:
                pass
    body, content_type, header_digest = client.get_manifest(repo, tag)
    digest = digest_of(body)
    if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
        raise DigestMismatch(f"manifest of {what} hashes to {digest}, the registry says {header_digest}",
                             "the registry or a proxy altered the manifest; nothing was cached")
    return _complete(str(ref), digest, body, want, fetch_doc, fetch_blob, store, state_root, progress,
                     "registry", what, limits, content_type)


def _verify_doc(body: bytes, digest: str, what: str) -> None:
    alg = digest.split(":", 1)[0]
    actual = digest_of(body, alg)
    if actual != digest:
        raise DigestMismatch(f"manifest {digest} of {what} failed verification: its content hashes to {actual}",
                             "the source served corrupt or tampered content; nothing was cached")


# -- local sources ----------------------------------------------------------------


def _source_fetchers(src: "BlobSource", store: BlobStore, what: str,
                     limits: Limits) -> tuple[FetchDoc, FetchBlob]:
    from microagent.images.layout import blob_name

    def fetch_doc(desc: Descriptor) -> bytes:
        limits.check("document_bytes", desc.size, f"manifest {desc.digest} of {what}")
        if store.has(desc.digest):
            return store.read_bytes(desc.digest, max_bytes=limits.document_bytes)
        with src.open_file(blob_name(desc.digest)) as fh:
            body = limits.read_document(fh, f"manifest {desc.digest} of {what}")
        _verify_doc(body, desc.digest, what)
        store.put_bytes(body, desc.digest)
        return body

    def fetch_blob(desc: Descriptor, on_bytes: Callable[[int], None] | None) -> None:
        if store.has(desc.digest, desc.size):
            return
        with src.open_file(blob_name(desc.digest)) as fh:
            store.write_file(desc.digest, fh, size=desc.size, on_bytes=on_bytes)

    return fetch_doc, fetch_blob


def _pull_layout(ref: LayoutReference, state_root: Path, store: BlobStore, want: Platform,
                 progress: PullProgress | None, limits: Limits) -> PulledImage:
    from microagent.images.layout import DirectorySource, read_index, select_manifest

    src = DirectorySource(ref.path)
    what = str(ref)
    desc = select_manifest(read_index(src, limits), ref.tag, what)
    fetch_doc, fetch_blob = _source_fetchers(src, store, what, limits)
    top = fetch_doc(desc)
    return _complete(str(ref), desc.digest, top, want, fetch_doc, fetch_blob, store, state_root, progress,
                     "oci-layout", what, limits, desc.media_type)


def _pull_archive(ref: ArchiveReference, state_root: Path, store: BlobStore, want: Platform,
                  progress: PullProgress | None, limits: Limits) -> PulledImage:
    from microagent.images.archive import TarSource, import_legacy, oci_index, read_entries, select_entry
    from microagent.images.layout import select_manifest

    what = str(ref)
    with TarSource(ref.path, limits) as src:
        idx = oci_index(src)
        has_manifest_json = src.has("manifest.json")
        entry = select_entry(src, read_entries(src), ref.ref) if (has_manifest_json or idx is None) else None
        if idx is not None:
            desc: Descriptor | None = None
            try:
                desc = select_manifest(idx, str(ref.ref) if ref.ref else None, what)
            except NotFound:
                if entry is None:
                    raise
                if len(idx.manifests) == 1:
                    desc = idx.manifests[0]
            if desc is not None:
                fetch_doc, fetch_blob = _source_fetchers(src, store, what, limits)
                top = fetch_doc(desc)
                return _complete(str(ref), desc.digest, top, want, fetch_doc, fetch_blob, store, state_root,
                                 progress, "docker-archive", what, limits, desc.media_type)
        assert entry is not None
        manifest_bytes, digest = import_legacy(src, entry, store, progress)
        return _complete(str(ref), digest, manifest_bytes, want, _offline_doc(store, limits), _offline_blob(store),
                         store, state_root, None, "docker-archive", what, limits, OCI_MANIFEST)


def describe(image: PulledImage) -> dict[str, object]:
    """A JSON-ready summary of a pulled image (for ``--json``)."""
    return {
        "reference": image.reference,
        "digest": image.digest,
        "resolved": image.resolved,
        "platform": str(image.platform),
        "source": image.source,
        "configDigest": image.config_digest,
        "config": json.loads(json.dumps({
            "entrypoint": list(image.config.entrypoint), "cmd": list(image.config.cmd),
            "env": list(image.config.env), "workingDir": image.config.working_dir,
            "user": image.config.user, "stopSignal": image.config.stop_signal})),
        "layers": [{"digest": l.digest, "mediaType": l.media_type, "size": l.size} for l in image.layers],
        "size": sum(l.size for l in image.layers),
    }
