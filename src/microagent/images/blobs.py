"""The content-addressed blob store: ``<state>/images/blobs/<alg>/<hex>``.

Owns writing blobs safely: every blob is written to a private temporary file
in ``blobs/tmp/``, hashed while it is written, checked against the digest it
claims, fsynced and only then renamed into place (an atomic ``rename(2)`` on
one filesystem).  A blob whose bytes do not match is deleted and never
becomes visible, so the store only ever holds verified content.  Concurrent
writers of one blob each write their own temporary file; whichever renames
last wins with identical bytes.

What references which blob (the image index) lives in :mod:`.store`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Protocol

from microagent.errors import Permanent, ResourceExhausted
from microagent.fsutil import fsync_dir
from microagent.images.reference import valid_digest

CHUNK = 1 << 20


class DigestMismatch(Permanent):
    """A blob's bytes do not hash to the digest it was fetched as."""


class SizeMismatch(Permanent):
    """A blob is longer or shorter than its descriptor says."""


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """``alg:hex`` of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _split(digest: str) -> tuple[str, str]:
    if not valid_digest(digest):
        raise Permanent(f"malformed digest {digest!r}", "digests look like sha256:<64 hex digits>")
    alg, hexpart = digest.split(":", 1)
    return alg, hexpart


def _disk_error(exc: OSError, what: str) -> Exception:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"no space left while writing {what}",
                                 "free disk space (try 'microagent image prune') and retry")
    return Permanent(f"cannot write {what}: {exc.strerror or exc}", "check the state directory's permissions")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class BlobStore:
    """Verified blobs on disk, addressed by digest.

    :param root: the ``blobs`` directory (``<state>/images/blobs``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_state(cls, state_root: Path) -> "BlobStore":
        return cls(Path(state_root) / "images" / "blobs")

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def path(self, digest: str) -> Path:
        """Where ``digest`` lives (whether or not it is there).

        :raises Permanent: for a malformed digest.
        """
        alg, hexpart = _split(digest)
        return self.root / alg / hexpart

    def has(self, digest: str, size: int | None = None) -> bool:
        """Whether the blob is present (and, if ``size`` is given, that long)."""
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or size < 0 or st.st_size == size

    def read_bytes(self, digest: str, *, max_bytes: int | None = None) -> bytes:
        """A small blob's bytes (manifests, configs), re-verified on read.

        :param max_bytes: refuse a larger blob without reading it (a digest of
            a layer named where a manifest belongs).
        :raises Permanent: when the blob is missing, corrupt on disk or too large.
        """
        path = self.path(digest)
        try:
            if max_bytes is not None and path.stat().st_size > max_bytes:
                raise Permanent(f"blob {digest} is larger than the {max_bytes} bytes a manifest or config may have",
                                "this digest names a layer or other large blob, not an image manifest")
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise Permanent(f"blob {digest} is not in the image cache",
                            "pull the image again") from exc
        alg = digest.split(":", 1)[0]
        if digest_of(data, alg) != digest:
            path.unlink(missing_ok=True)
            raise DigestMismatch(f"cached blob {digest} is corrupt and was removed", "pull the image again")
        return data

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store ``data`` (verified against ``digest`` when given); returns its digest.

        :raises DigestMismatch: when ``data`` does not hash to ``digest``.
        """
        expected = digest or digest_of(data)
        if not self.has(expected, len(data)):
            self.write(expected, [data], size=len(data))
        return expected

    def write(self, digest: str | None, chunks: Iterable[bytes], *, size: int | None = None,
              on_bytes: Callable[[int], None] | None = None) -> Path:
        """Write a blob from ``chunks``, verifying it before it becomes visible.

        :param digest: what the bytes must hash to; ``None`` to store them under
            their sha256 (for sources that do not name their blobs by digest).
        :param size: the descriptor's size; a longer or shorter stream is rejected.
        :param on_bytes: called with the length of each chunk written.
        :raises DigestMismatch: the bytes hash to something else (nothing is stored).
        :raises SizeMismatch: the stream is longer or shorter than ``size``.
        :raises ResourceExhausted: the disk is full.
        """
        alg, hexpart = _split(digest) if digest is not None else ("sha256", "")
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmpname = tempfile.mkstemp(prefix=f"{hexpart[:16] or 'ingest'}.", suffix=".part",
                                           dir=self.tmp_dir)
        except OSError as exc:
            raise _disk_error(exc, f"blob {digest}") from exc
        tmp = Path(tmpname)
        try:
            hasher = hashlib.new(alg)
            written = 0
            try:
                for chunk in chunks:  # errors of the source propagate as they are
                    if not chunk:
                        continue
                    written += len(chunk)
                    if size is not None and size >= 0 and written > size:
                        raise SizeMismatch(f"blob {digest} is larger than the {size} bytes its descriptor says",
                                           "the source is serving wrong content; report it to its owner")
                    hasher.update(chunk)
                    try:
                        _write_all(fd, chunk)
                    except OSError as exc:
                        raise _disk_error(exc, f"blob {digest}") from exc
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                try:
                    os.fsync(fd)
                except OSError as exc:
                    raise _disk_error(exc, f"blob {digest}") from exc
            finally:
                os.close(fd)
            if size is not None and size >= 0 and written != size:
                raise SizeMismatch(f"blob {digest} is truncated: got {written} of {size} bytes",
                                   "retry; if it persists the source is serving a broken blob")
            actual = f"{alg}:{hasher.hexdigest()}"
            if digest is None:
                digest = actual
            if actual != digest:
                raise DigestMismatch(f"blob {digest} failed verification: its content hashes to {actual}",
                                     "the source served corrupt or tampered content; nothing was cached")
            final = self.root / alg / actual.split(":", 1)[1]
            try:
                os.chmod(tmp, 0o400)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)  # from the store's tmp/, where gc finds what a crash leaves
                fsync_dir(final.parent)
            except OSError as exc:
                raise _disk_error(exc, f"blob {digest}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def write_file(self, digest: str | None, src: IO[bytes], *, size: int | None = None,
                   on_bytes: Callable[[int], None] | None = None) -> Path:
        """Copy a readable binary stream into the store, verifying it.

        :raises DigestMismatch: see :meth:`write`.
        """

        def chunks() -> Iterator[bytes]:
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    return
                yield chunk

        return self.write(digest, chunks(), size=size, on_bytes=on_bytes)

    def digests(self) -> Iterator[str]:
        """Every blob digest in the store."""
        for alg_dir in sorted(self.root.glob("*")):
            if alg_dir.name == "tmp" or not alg_dir.is_dir():
                continue
            for blob in sorted(alg_dir.iterdir()):
                digest = f"{alg_dir.name}:{blob.name}"
                if valid_digest(digest):
                    yield digest

    def remove(self, digest: str) -> int:
        """Delete a blob; returns the bytes freed (0 if it was absent)."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def clear_tmp(self) -> int:
        """Remove leftover temporary files (only safe while no pull runs)."""
        freed = 0
        if self.tmp_dir.is_dir():
            for entry in self.tmp_dir.iterdir():
                try:
                    freed += entry.stat().st_size
                    entry.unlink()
                except (FileNotFoundError, IsADirectoryError):
                    shutil.rmtree(entry, ignore_errors=True)
        return freed


class PullProgress(Protocol):
    """What a pull reports while blobs flow into the store (a TTY renderer, or nothing).

    ``on_bytes`` may be called with a negative ``n`` when a broken transfer restarts.
    """

    def on_layer_start(self, digest: str, size: int) -> None: ...

    def on_bytes(self, digest: str, n: int) -> None: ...

    def on_layer_done(self, digest: str) -> None: ...
