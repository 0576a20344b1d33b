"""Image references: what the user typed, parsed and normalised.

Owns the grammar of the four sources an image can come from, with no I/O:

* a registry reference, normalised the way Docker users expect
  (``busybox`` → ``docker.io/library/busybox:latest``; ``host:port/a/b:tag``;
  ``name@sha256:…``; ``name:tag@sha256:…``, where the digest wins);
* ``oci:PATH[:TAG]``: an OCI image layout directory;
* ``docker-archive:PATH[:REF]``: a ``docker save`` tarball;
* ``builtin:NAME``: recognised here, served by :mod:`microagent.images.builtin`.

Invalid input raises :class:`~microagent.errors.Permanent` naming the problem.
Fetching lives in :mod:`~microagent.images.pull` and the modules it calls.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from msgspec import Struct

from microagent.errors import Permanent

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
DEFAULT_TAG = "latest"

# distribution/reference grammar (reference.go), anchored per component.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_NAME_MAX = 255

SOURCE_PREFIXES = ("oci:", "docker-archive:", "builtin:")


class ImageReference(Struct, frozen=True):
    """A registry image reference, normalised.

    ``tag`` is ``None`` only when a digest is given without a tag.
    """

    registry: str  # "docker.io", "localhost:5000", "[::1]:5000"
    repository: str  # "library/busybox"
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host[:port] to talk HTTP to (Docker Hub's API lives elsewhere)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def host(self) -> str:
        """The registry host without port (brackets stripped for IPv6)."""
        reg = self.registry
        if reg.startswith("["):
            return reg[1 : reg.index("]")]
        return reg.rsplit(":", 1)[0] if ":" in reg else reg

    @property
    def lookup(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> "ImageReference":
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


class LayoutReference(Struct, frozen=True):
    """``oci:PATH[:TAG]``: an OCI image layout directory."""

    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


class ArchiveReference(Struct, frozen=True):
    """``docker-archive:PATH[:REF]``: a ``docker save`` tarball."""

    path: Path
    ref: ImageReference | None = None

    def __str__(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.ref}" if self.ref else "")


class BuiltinReference(Struct, frozen=True):
    """``builtin:NAME``: an image the project builds itself."""

    name: str

    def __str__(self) -> str:
        return f"builtin:{self.name}"


Reference = Union[ImageReference, LayoutReference, ArchiveReference, BuiltinReference]


def _invalid(ref: str, why: str) -> Permanent:
    return Permanent(
        f"invalid image reference {ref!r}: {why}",
        "use NAME[:TAG][@sha256:DIGEST] (e.g. busybox, ghcr.io/org/app:1.2), "
        "oci:PATH[:TAG], docker-archive:PATH[:REF] or builtin:NAME",
        reference=ref,
    )


def valid_digest(digest: str) -> bool:
    """Whether ``digest`` is ``sha256:<64 hex>`` or ``sha512:<128 hex>``."""
    return _DIGEST.fullmatch(digest) is not None


def parse_image_reference(ref: str) -> ImageReference:
    """Parse and normalise a registry reference.

    :param ref: e.g. ``busybox``, ``library/busybox:1.36``,
        ``127.0.0.1:5000/a/b@sha256:…``.
    :raises Permanent: naming what is wrong with ``ref``.
    """
    if not ref or ref != ref.strip():
        raise _invalid(ref, "empty or surrounded by whitespace")
    if any(c.isspace() for c in ref):
        raise _invalid(ref, "contains whitespace")
    rest = ref
    digest: str | None = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not valid_digest(digest):
            if digest.split(":", 1)[0] not in ("sha256", "sha512"):
                raise _invalid(ref, f"unsupported digest {digest!r} (only sha256 and sha512)")
            raise _invalid(ref, f"malformed digest {digest!r} (want sha256: and 64 lowercase hex digits)")
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _invalid(ref, f"malformed tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)")
    if not rest:
        raise _invalid(ref, "no repository name")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, remainder
        if not _DOMAIN.fullmatch(registry):
            raise _invalid(ref, f"malformed registry host {registry!r}")
        registry = registry.lower()
    else:
        registry, path = DOCKER_HUB, rest
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    for component in path.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            if component.lower() != component and _PATH_COMPONENT.fullmatch(component.lower()):
                raise _invalid(ref, "repository names must be lowercase")
            raise _invalid(ref, f"malformed repository path component {component!r}")
    if len(f"{registry}/{path}") > _NAME_MAX:
        raise _invalid(ref, f"name longer than {_NAME_MAX} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageReference(registry, path, tag, digest)


def _split_path_suffix(body: str) -> tuple[str, str | None]:
    """``PATH[:SUFFIX]`` where the suffix is whatever follows the first ``:``.

    An existing path containing ``:`` is taken whole.
    """
    if Path(body).exists() or ":" not in body:
        return body, None
    path, suffix = body.split(":", 1)
    return path, suffix


def parse_reference(ref: str) -> Reference:
    """Parse any image reference the CLI accepts.

    :raises Permanent: naming what is wrong with ``ref``.
    """
    if ref.startswith("oci:"):
        body = ref.removeprefix("oci:")
        if not body:
            raise _invalid(ref, "oci: needs a layout directory path")
        if Path(body).exists():
            return LayoutReference(Path(body).absolute())
        path, tag = body, None
        if ":" in body.rsplit("/", 1)[-1]:
            path, tag = body.rsplit(":", 1)
            if not tag:
                raise _invalid(ref, "empty tag after ':'")
        return LayoutReference(Path(path).absolute(), tag)
    if ref.startswith("docker-archive:"):
        body = ref.removeprefix("docker-archive:")
        if not body:
            raise _invalid(ref, "docker-archive: needs a tarball path")
        path, suffix = _split_path_suffix(body)
        inner = parse_image_reference(suffix) if suffix else None
        if inner is not None and inner.digest:
            raise _invalid(ref, "a docker-archive reference names a tag, not a digest")
        return ArchiveReference(Path(path).absolute(), inner)
    if ref.startswith("builtin:"):
        name = ref.removeprefix("builtin:")
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
            raise _invalid(ref, "builtin: needs a lowercase image name")
        return BuiltinReference(name)
    return parse_image_reference(ref)


def normalize(ref: str) -> str:
    """The canonical string of ``ref`` (``busybox`` → ``docker.io/library/busybox:latest``).

    :raises Permanent: for an invalid reference.
    """
    return str(parse_reference(ref))
