"""The one check for image-supplied strings that reach host paths.

An image (its index, manifest, config, layout or archive) is untrusted input.
Any string of it that becomes part of a host file name goes through
:func:`path_token` first, and any host path built from outside input is
confirmed with :func:`inside` before it is opened or written.  Everything
else an image says (annotations, tags, config fields) is only compared or
handed to the guest, never joined to a host path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from microagent.errors import Permanent
from microagent.images.model import Platform
from microagent.images.reference import valid_digest

#: One file-name-safe token: no ``/``, no leading ``.`` (so never ``.`` or
#: ``..``), no whitespace or control bytes, bounded length.  Every OCI
#: os/architecture/variant value in use (``linux``, ``amd64``, ``arm64``,
#: ``v8``, ``ppc64le``, ``s390x``, ``386``) fits.
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

HOSTILE_HINT = "the image is malformed or hostile; use an image from a source you trust"


def path_token(value: object, what: str) -> str:
    """``value`` when it is safe as one component of a host file name.

    :param what: names the field in the error (``"platform variant of X"``).
    :raises Permanent: anything else.
    """
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise Permanent(f"{what} {value!r} is not a valid name "
                        "(letters, digits, '.', '_', '-'; at most 64; not starting with '.')", HOSTILE_HINT)
    return value


def check_platform(platform: Platform, what: str, *, required: bool = False) -> Platform:
    """A platform whose os, architecture and variant are path tokens (empty allowed unless ``required``).

    :raises Permanent: naming the offending field.
    """
    for field in ("os", "architecture", "variant"):
        value = getattr(platform, field)
        if value == "" and not (required and field != "variant"):
            continue
        path_token(value, f"{what}: platform {field}")
    return platform


def digest_hex(digest: str, what: str) -> str:
    """The hex part of a well-formed digest (``sha256:<64 hex>``).

    :raises Permanent: for anything else.
    """
    if not isinstance(digest, str) or not valid_digest(digest):
        raise Permanent(f"{what}: malformed digest {digest!r}", HOSTILE_HINT)
    return digest.split(":", 1)[1]


def inside(base: Path, path: Path, what: str) -> Path:
    """``path`` after resolving symlinks and ``..``, refused unless it is inside ``base``.

    :raises Permanent: it resolves outside ``base``.
    """
    real_base = Path(os.path.realpath(base))
    real = Path(os.path.realpath(path))
    if real != real_base and real_base not in real.parents:
        raise Permanent(f"{what} resolves to {real}, outside {real_base}", HOSTILE_HINT)
    return real
