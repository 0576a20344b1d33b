"""How much of the host one image may use: document, blob and extraction caps.

Defaults are generous for real images and stop a hostile one early.  Each is
raised with an environment variable (``MICROAGENT_IMAGE_MAX_*``, read when
the limits are made) or, for the pull-time ones, a flag of ``microagent
image pull``.  Values are bytes, optionally with a binary suffix
(``K``/``M``/``G``/``T``, ``KiB``/``MiB``/...); ``0`` is not a way to lift a
limit (use a large number).

========================  =======  ===========================================
limit                     default  what it bounds
========================  =======  ===========================================
``document_bytes``        4 MiB    one manifest, index, config, ``index.json``
                                   or ``manifest.json``
``blob_bytes``            32 GiB   one layer blob as stored (compressed)
``extracted_bytes``       64 GiB   apparent size of all files of all layers
                                   (sparse holes count, but stay holes)
``entries``               1000000  tar entries of all layers together
========================  =======  ===========================================
"""

from __future__ import annotations

import os
import re
from typing import IO, Mapping

from msgspec import Struct, structs

from microagent.errors import Permanent

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

ENV = {
    "document_bytes": "MICROAGENT_IMAGE_MAX_DOCUMENT_BYTES",
    "blob_bytes": "MICROAGENT_IMAGE_MAX_BLOB_BYTES",
    "extracted_bytes": "MICROAGENT_IMAGE_MAX_EXTRACTED_BYTES",
    "entries": "MICROAGENT_IMAGE_MAX_ENTRIES",
}
#: the ``microagent image pull`` flag for a limit (pull-time limits only)
FLAGS = {"document_bytes": "--max-document-bytes", "blob_bytes": "--max-blob-bytes"}

_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}


def parse_size(text: str, what: str) -> int:
    """``"4M"`` → 4194304; plain digits are bytes.

    :raises Permanent: not a positive size.
    """
    m = _SIZE.fullmatch(text.strip())
    value = int(m.group(1)) * _UNITS[m.group(2).upper()] if m else 0
    if value <= 0:
        raise Permanent(f"{what} must be a positive size such as 4194304, 512M or 64G, not {text!r}",
                        f"fix {what}")
    return value


class Limits(Struct, frozen=True):
    document_bytes: int = 4 * MiB
    blob_bytes: int = 32 * GiB
    extracted_bytes: int = 64 * GiB
    entries: int = 1_000_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Limits":
        """The defaults, raised or lowered by ``MICROAGENT_IMAGE_MAX_*``.

        :raises Permanent: a variable is set to something that is not a size.
        """
        env = os.environ if environ is None else environ
        values = {}
        for name in cls.__struct_fields__:
            text = env.get(ENV[name], "").strip()
            if text:
                values[name] = parse_size(text, ENV[name])
        return cls(**values)

    def with_overrides(self, **values: int | None) -> "Limits":
        """A copy with the given (non-``None``) limits replaced."""
        return structs.replace(self, **{k: v for k, v in values.items() if v is not None})

    def check(self, name: str, size: int, what: str) -> None:
        """Refuse ``size`` over limit ``name``, before anything of it is read or written.

        :raises Permanent: naming the limit and how to raise it.
        """
        if size > getattr(self, name):
            raise self.exceeded(name, what, size)

    def read_document(self, fh: IO[bytes], what: str) -> bytes:
        """All of ``fh``, a JSON document, read no further than the document cap.

        :raises Permanent: it is longer than the cap.
        """
        data = fh.read(self.document_bytes + 1)
        if len(data) > self.document_bytes:
            raise self.exceeded("document_bytes", what)
        return data

    def exceeded(self, name: str, what: str, actual: int | None = None) -> Permanent:
        """The error for ``what`` going over limit ``name`` (names how to raise it)."""
        limit = getattr(self, name)
        how = f"{ENV[name]}=N" + (f" or 'microagent image pull {FLAGS[name]} N'" if name in FLAGS else "")
        size = f" ({actual})" if actual is not None else ""
        return Permanent(f"{what}{size} exceeds the limit of {limit} {'entries' if name == 'entries' else 'bytes'}",
                         f"if you trust this image, raise the limit with {how}", limit=name, max=limit)


def resolve(limits: Limits | None) -> Limits:
    """``limits``, or the defaults with the environment applied."""
    return Limits.from_env() if limits is None else limits
