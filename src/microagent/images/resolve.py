"""Image references to base disks: the one entry point boot plans use.

:func:`check_reference` is cheap and has no side effects (it runs before any
disk is built or VM started); :func:`resolve_image` pulls when needed
(:func:`microagent.images.pull.pull`) and builds or reuses the base disk
(:func:`microagent.images.rootfs.build_base_disk`).  ``builtin:`` images are
built locally (:mod:`.builtin`) and go through the same rootfs build.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from microagent.errors import NotFound
from microagent.images.model import BaseImage

if TYPE_CHECKING:
    from microagent.images.blobs import PullProgress
    from microagent.images.rootfs import BuildProgress

__all__ = ["BaseImage", "check_reference", "resolve_image"]


def check_reference(ref: str) -> None:
    """Refuse references that cannot be served, before any side effect.

    :raises NotFound: for an unknown ``builtin:`` image.
    :raises Permanent: for a reference that does not parse.
    """
    from microagent.images.reference import BuiltinReference, parse_reference

    parsed = parse_reference(ref)
    if isinstance(parsed, BuiltinReference):
        from microagent.images.builtin import NAMES

        if parsed.name not in NAMES:
            raise NotFound(f"unknown built-in image {ref!r}",
                           f"use one of: {', '.join('builtin:' + n for n in NAMES)}")


def resolve_image(ref: str, state_root: Path, guest_init: Path, *, architecture: str | None = None,
                  size_bytes: int | None = None, allow_insecure: bool = False,
                  progress: "PullProgress | None" = None,
                  build_progress: "BuildProgress | None" = None) -> BaseImage:
    """The base disk for ``ref``, pulled and built if needed.

    :param architecture: the backend's architecture (default: the host's).
    :param size_bytes: exact disk size (default: content plus headroom).
    :raises NotFound: unknown image, tag or platform; missing host tools.
    :raises Permanent: invalid reference, corrupt or hostile layers, unknown image user.
    :raises PolicyDenied: the registry needs credentials.
    :raises Transient: the registry is unreachable.
    :raises ResourceExhausted: the disk is full or the content does not fit ``size_bytes``.
    """
    from microagent.paths import host_arch

    check_reference(ref)
    arch = architecture or host_arch()
    if ref.startswith("builtin:"):
        from microagent.images.builtin import busybox_pulled

        image = busybox_pulled(state_root, arch)
        if size_bytes is None:
            size_bytes = 64 * 1024 * 1024
    else:
        from microagent.images.pull import pull

        image = pull(ref, state_root, architecture=arch, progress=progress, allow_insecure=allow_insecure)
    from microagent.images.rootfs import build_base_disk

    return build_base_disk(image, state_root, guest_init, size_bytes=size_bytes, progress=build_progress)
