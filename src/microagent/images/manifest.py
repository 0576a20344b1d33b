"""OCI / Docker manifest documents: media types, parsing, platform selection.

Owns the shapes of the OCI image spec (``image-index.md``, ``manifest.md``,
``config.md``) and of Docker's image manifest v2 schema 2 that microagent
accepts, checked on arrival, and choosing an index entry for a platform.  No
I/O: the registry client, the OCI layout reader and the docker-archive reader
fetch the bytes; :mod:`.pull` strings them together.
"""

from __future__ import annotations

import json
from typing import Any

from msgspec import Struct, field

from microagent.errors import NotFound, Permanent
from microagent.images.model import ImageConfig, Platform
from microagent.images.reference import valid_digest
from microagent.images.untrusted import check_platform

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = {
    OCI_LAYER_TAR: "tar",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}

#: OCI architecture spelling for microagent's (``paths.host_arch``) spelling.
OCI_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def layer_compression(media_type: str) -> str:
    """``tar``, ``gzip`` or ``zstd`` for a layer media type.

    :raises Permanent: for a media type that is not a filesystem layer.
    """
    try:
        return LAYER_TYPES[media_type]
    except KeyError:
        raise Permanent(f"unsupported layer media type {media_type!r}",
                        "only tar, tar+gzip and tar+zstd filesystem layers can be run as a root disk") from None


def platform_for(architecture: str, variant: str = "") -> Platform:
    """The wanted platform for a backend architecture (``x86_64`` → ``linux/amd64``)."""
    arch = OCI_ARCH.get(architecture, architecture)
    return Platform(architecture=arch, os="linux", variant=variant)


class Descriptor(Struct, frozen=True):
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)  # equality and hash leave it out
    urls: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Descriptor) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        return self.media_type, self.digest, self.size, self.platform, self.urls

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class Index(Struct, frozen=True):
    media_type: str
    manifests: tuple[Descriptor, ...]


class Manifest(Struct, frozen=True):
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Permanent(f"{what} is not valid JSON", "the image source is serving a broken document") from exc
    if not isinstance(doc, dict):
        raise Permanent(f"{what} is not a JSON object", "the image source is serving a broken document")
    return doc


def _platform(doc: dict[str, Any]) -> Platform:
    """os/architecture/variant of an index entry or a config (checked by the caller)."""
    def field(key: str) -> Any:
        value = doc.get(key)
        return "" if value is None else value

    return Platform(architecture=field("architecture"), os=field("os"), variant=field("variant"))


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise Permanent(f"{what}: a descriptor is not an object", "the image is malformed")
    digest = raw.get("digest")
    size = raw.get("size")
    media_type = raw.get("mediaType", "")
    if not isinstance(digest, str) or not valid_digest(digest):
        raise Permanent(f"{what}: descriptor has a malformed digest {digest!r}", "the image is malformed")
    if not isinstance(size, int) or size < 0:
        raise Permanent(f"{what}: descriptor {digest} has no valid size", "the image is malformed")
    plat = raw.get("platform")
    platform = None
    if isinstance(plat, dict):
        platform = check_platform(_platform(plat), f"{what}: descriptor {digest}")
    annotations = raw.get("annotations") or {}
    urls = raw.get("urls") or ()
    return Descriptor(str(media_type), digest, size, platform,
                      {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {},
                      tuple(str(u) for u in urls) if isinstance(urls, list) else ())


def sniff_media_type(data: bytes, declared: str = "") -> str:
    """The media type of a manifest document: the declared one, else its ``mediaType``, else by shape."""
    doc = _load(data, "manifest")
    body_type = doc.get("mediaType")
    if isinstance(body_type, str) and body_type:
        return body_type
    if declared and declared not in ("application/json", "text/plain", "application/octet-stream"):
        return declared
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return declared or "application/json"


def check_supported(media_type: str, what: str) -> None:
    """Refuse manifest media types microagent cannot run.

    :raises Permanent: naming the media type.
    """
    if media_type in INDEX_TYPES or media_type in MANIFEST_TYPES:
        return
    if media_type in DOCKER_SCHEMA1:
        raise Permanent(f"{what} uses the deprecated Docker schema 1 manifest ({media_type})",
                        "rebuild or re-push the image with a current docker/buildah/skopeo (schema 2 or OCI)")
    raise Permanent(f"{what} has unsupported manifest media type {media_type!r}",
                    "microagent runs OCI and Docker v2 schema 2 container images only")


def parse_index(data: bytes, what: str = "image index") -> Index:
    """Parse an OCI image index or a Docker manifest list.

    :raises Permanent: when it is malformed.
    """
    doc = _load(data, what)
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise Permanent(f"{what} has no 'manifests' list", "the image is malformed")
    return Index(str(doc.get("mediaType") or OCI_INDEX), tuple(_descriptor(m, what) for m in manifests))


def parse_manifest(data: bytes, what: str = "image manifest") -> Manifest:
    """Parse an OCI image manifest or a Docker v2 schema 2 manifest.

    :raises Permanent: when it is malformed, its config is not a container
        image config, or a layer's media type is not a filesystem layer.
    """
    doc = _load(data, what)
    media_type = str(doc.get("mediaType") or OCI_MANIFEST)
    if doc.get("schemaVersion") not in (2, None):
        check_supported(DOCKER_SCHEMA1[0], what)
    config = _descriptor(doc.get("config"), what)
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise Permanent(f"{what} is not a container image: its config media type is {config.media_type!r}",
                        "pull a container image (OCI or Docker), not another kind of OCI artifact")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise Permanent(f"{what} has no 'layers' list", "the image is malformed")
    layers = tuple(_descriptor(layer, what) for layer in raw_layers)
    for layer in layers:
        layer_compression(layer.media_type)
    return Manifest(media_type, config, layers)


def _is_attestation(desc: Descriptor) -> bool:
    return (desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest"
            or (desc.platform is not None and desc.platform.os == "unknown"))


def select_platform(index: Index, want: Platform, what: str) -> Descriptor:
    """The index entry for ``want`` (os + architecture; variant when both name one).

    For ``arm64`` an entry without variant and ``v8`` are equivalent.  Entries
    that are attestations or have no platform are skipped.

    :raises NotFound: naming the platforms the index does have.
    """
    def norm_variant(p: Platform) -> str:
        if p.architecture == "arm64" and p.variant in ("", "v8"):
            return ""
        return p.variant

    candidates = [d for d in index.manifests if d.platform is not None and not _is_attestation(d)]
    matches = [d for d in candidates
               if d.platform is not None and d.platform.os == want.os
               and d.platform.architecture == want.architecture]
    if want.variant:
        exact = [d for d in matches if d.platform is not None and norm_variant(d.platform) == norm_variant(want)]
        matches = exact
    if matches:
        # prefer the plain variant for arm64 when not asked for one
        if not want.variant:
            plain = [d for d in matches if d.platform is not None and norm_variant(d.platform) == ""]
            if plain:
                return plain[0]
        return matches[0]
    available = sorted({str(d.platform) for d in candidates if d.platform is not None})
    raise NotFound(f"{what} has no image for platform {want}; it has: {', '.join(available) or 'none'}",
                   "pick an image built for this architecture, or use a backend/host of one of those platforms",
                   wanted=str(want), available=available)


def parse_config(data: bytes, what: str = "image config") -> tuple[ImageConfig, Platform, list[str]]:
    """The run settings, platform and ``rootfs.diff_ids`` of an image config.

    :raises Permanent: when it is malformed.
    """
    doc = _load(data, what)
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise Permanent(f"{what}: 'config' is not an object", "the image is malformed")

    def strings(key: str) -> tuple[str, ...]:
        value = cfg.get(key)
        if value is None:
            return ()
        if isinstance(value, str):  # tolerated: some tools write a bare string
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Permanent(f"{what}: {key} is not a list of strings", "the image is malformed")
        return tuple(value)

    config = ImageConfig(
        entrypoint=strings("Entrypoint"),
        cmd=strings("Cmd"),
        env=strings("Env"),
        working_dir=str(cfg.get("WorkingDir") or ""),
        user=str(cfg.get("User") or ""),
        stop_signal=str(cfg.get("StopSignal") or ""),
    )
    platform = check_platform(_platform(doc), what)
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    return config, platform, [str(d) for d in diff_ids] if isinstance(diff_ids, list) else []


def config_to_json(config: ImageConfig) -> dict[str, Any]:
    """An :class:`ImageConfig` as the OCI config's ``config`` object (for the index)."""
    out: dict[str, Any] = {}
    if config.entrypoint:
        out["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        out["Cmd"] = list(config.cmd)
    if config.env:
        out["Env"] = list(config.env)
    if config.working_dir:
        out["WorkingDir"] = config.working_dir
    if config.user:
        out["User"] = config.user
    if config.stop_signal:
        out["StopSignal"] = config.stop_signal
    return out


def config_from_json(doc: dict[str, Any]) -> ImageConfig:
    """Inverse of :func:`config_to_json`."""
    return ImageConfig(
        entrypoint=tuple(doc.get("Entrypoint") or ()),
        cmd=tuple(doc.get("Cmd") or ()),
        env=tuple(doc.get("Env") or ()),
        working_dir=str(doc.get("WorkingDir") or ""),
        user=str(doc.get("User") or ""),
        stop_signal=str(doc.get("StopSignal") or ""),
    )
