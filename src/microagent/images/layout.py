"""OCI image layouts (``oci:PATH[:TAG]``): reading ``index.json`` and blobs.

Owns the OCI image-layout spec (``image-layout.md``): the ``oci-layout``
marker, ``index.json`` and ``blobs/<alg>/<hex>``, and choosing the manifest a
tag names through the ``org.opencontainers.image.ref.name`` annotation.  The
layout is read through the small :class:`BlobSource` interface so that an OCI
layout packed in a tarball (newer ``docker save``, see :mod:`.archive`) is
read by the same code.  Blobs are copied into the blob store, verified there.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO, Protocol

from microagent.errors import NotFound, Permanent
from microagent.images.limits import Limits, resolve
from microagent.images.manifest import Descriptor, Index, parse_index
from microagent.images.reference import parse_image_reference, valid_digest
from microagent.images.untrusted import HOSTILE_HINT, inside

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


class BlobSource(Protocol):
    """Read access to the files of an OCI layout, wherever they are stored."""

    description: str

    def open_file(self, name: str) -> IO[bytes]:
        """Open a file of the layout (``index.json``, ``blobs/sha256/…``).

        :raises NotFound: it is not there.
        """
        ...


def blob_name(digest: str) -> str:
    if not valid_digest(digest):
        raise Permanent(f"malformed digest {digest!r}", "the image layout is malformed")
    alg, hexpart = digest.split(":", 1)
    return f"blobs/{alg}/{hexpart}"


class DirectorySource:
    """An OCI layout directory on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = f"OCI layout {self.root}"
        if not self.root.is_dir():
            raise NotFound(f"OCI layout directory {self.root} does not exist",
                           "give the path of a directory holding index.json and blobs/ (e.g. from 'skopeo copy')")
        if not (self.root / "index.json").is_file():
            raise Permanent(f"{self.root} is not an OCI image layout: it has no index.json",
                            "point oci: at a directory written by skopeo/buildah/umoci ('oci:DIR[:TAG]')")

    def open_file(self, name: str) -> IO[bytes]:
        """Open a regular file inside the layout (a symlink out of it, a FIFO or a device is refused)."""
        path = inside(self.root, self.root / name, f"{self.description}: {name}")
        try:
            # non-blocking so that a FIFO planted in the layout cannot hang the open
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFound(f"{self.description} is missing {name}", "the layout is incomplete; re-export it") from exc
        except OSError as exc:
            raise Permanent(f"cannot read {path}: {exc.strerror}", "check its permissions") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Permanent(f"{self.description}: {name} is not a regular file", HOSTILE_HINT)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")


def read_index(source: BlobSource, limits: Limits | None = None) -> Index:
    """The layout's ``index.json``.

    :raises Permanent: it is missing, malformed or larger than the document limit.
    """
    limits = resolve(limits)
    with source.open_file("index.json") as fh:
        data = limits.read_document(fh, f"{source.description} index.json")
    try:
        with source.open_file("oci-layout") as fh:
            layout = json.loads(limits.read_document(fh, f"{source.description} oci-layout"))
        if layout.get("imageLayoutVersion") not in ("1.0.0", "1.0.1", "1.1.0"):
            raise Permanent(f"{source.description}: unsupported imageLayoutVersion "
                            f"{layout.get('imageLayoutVersion')!r}", "re-export it with a current tool")
    except NotFound:
        pass  # oci-layout is required by the spec, but index.json is what matters
    except (ValueError, AttributeError) as exc:
        raise Permanent(f"{source.description}: oci-layout is not valid JSON", "re-export the layout") from exc
    return parse_index(data, f"{source.description} index.json")


def _names(desc: Descriptor) -> set[str]:
    out = set()
    for key in (REF_NAME, CONTAINERD_NAME):
        value = desc.annotations.get(key)
        if value:
            out.add(value)
    return out


def _matches(desc: Descriptor, tag: str) -> bool:
    names = _names(desc)
    if tag in names:
        return True
    # a full reference in the annotation matches its tag; a tag matches a normalised reference
    for name in names:
        try:
            if ":" in tag or "/" in tag:
                if str(parse_image_reference(name)) == str(parse_image_reference(tag)):
                    return True
            elif parse_image_reference(name).tag == tag:
                return True
        except Permanent:
            continue
    return False


def select_manifest(index: Index, tag: str | None, what: str) -> Descriptor:
    """The entry of ``index.json`` a tag names (or the only entry when no tag).

    :raises NotFound: no entry has that name, or no tag was given and there
        are several entries (the message lists the names there are).
    """
    names = sorted({n for d in index.manifests for n in _names(d)})
    if tag is None:
        if len(index.manifests) == 1:
            return index.manifests[0]
        tagged = [d for d in index.manifests if REF_NAME in d.annotations and d.annotations[REF_NAME] == "latest"]
        if len(tagged) == 1:
            return tagged[0]
        raise NotFound(f"{what} holds {len(index.manifests)} images; say which one",
                       f"add a tag: one of {', '.join(names) or '(none are named)'}", available=names)
    if valid_digest(tag):
        for desc in index.manifests:
            if desc.digest == tag:
                return desc
    found = [d for d in index.manifests if _matches(d, tag)]
    if not found:
        raise NotFound(f"{what} has no image named {tag!r}",
                       f"use one of: {', '.join(names) or '(no image in it is named)'}", available=names)
    return found[0]
