"""Image references to base disks.

Only ``builtin:`` images exist until the OCI pipeline lands (issue #4); any
other reference is refused up front, before anything is built or booted.
"""

from __future__ import annotations

from pathlib import Path

from microagent.errors import NotFound, Unsupported
from microagent.images.model import BaseImage, ImageConfig


def check_reference(ref: str) -> None:
    """Refuse references this build cannot serve, before any side effect.

    :raises NotFound: for an unknown ``builtin:`` image.
    :raises Unsupported: for registry, layout and archive references.
    """
    if ref.startswith("builtin:"):
        from microagent.images.builtin import NAMES

        if ref.removeprefix("builtin:") not in NAMES:
            raise NotFound(f"unknown built-in image {ref!r}",
                           f"use one of: {', '.join('builtin:' + n for n in NAMES)}")
        return
    raise Unsupported(f"image {ref!r}: only built-in images are supported so far",
                      "use builtin:busybox (OCI registry images are tracked in issue #4)")


def resolve_image(ref: str, state_root: Path, guest_init: Path) -> BaseImage:
    """The base disk for ``ref``, built if needed.

    :raises NotFound: for unknown images or missing host tools.
    :raises Unsupported: for references this build cannot serve.
    """
    check_reference(ref)
    from microagent.images.builtin import busybox_image

    img = busybox_image(state_root, guest_init)
    return BaseImage(reference=img.name, digest=img.digest, disk=img.disk)
