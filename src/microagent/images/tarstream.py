"""Reading an untrusted tar stream without letting it grow memory, disk or time.

Owns the hardening of :mod:`tarfile` for image layers; :mod:`.layers` owns
what the entries mean.  What a hostile layer could otherwise do, and what
happens instead:

* a PAX or GNU long-name header of gigabytes (read whole into memory), or
  global PAX headers piling up: refused over :data:`MAX_HEADER_BYTES`;
* a sparse map of millions of segments, or segments out of order,
  overlapping, past the file's size or past the data stored: refused;
* a sparse file: written with its holes kept as holes (``pwrite`` at each
  segment, ``ftruncate`` to the apparent size), never zero-filled;
* numbers out of range (``mtime=inf``/``nan``/``1e400``, uid ``-1``, huge
  device numbers), a NUL byte in a name or link target: a clean refusal
  (:class:`BadValue`), never a traceback from deep inside a later step;
* a PAX ``size`` that is not a number (tarfile reads it as 0 and then parses
  the data as headers): :class:`Broken`;
* anything else tarfile raises while parsing headers: :class:`Broken`.
"""

from __future__ import annotations

import contextlib
import math
import os
import tarfile
from decimal import Decimal, InvalidOperation
from typing import IO, Iterator

from microagent.errors import MicroagentError

#: one PAX / GNU long-name header, and all global PAX records together
MAX_HEADER_BYTES = 1 << 20
#: data segments of one sparse file
MAX_SPARSE_SEGMENTS = 1 << 18
#: the widest time ext4 stores (seconds, 1901-12-13 .. 2446-05-10)
MIN_TIME_S, MAX_TIME_S = -(1 << 31), (1 << 34) - (1 << 31) - 1
MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "no change" to the kernel
MAX_MAJOR, MAX_MINOR = (1 << 12) - 1, (1 << 20) - 1
MAX_XATTR_NAME, MAX_XATTR_VALUE = 255, 64 * 1024
NS = 1_000_000_000
_CHUNK = 1 << 20
_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)


class Broken(Exception):
    """The stream is not a readable tar (decompression, framing, a header tarfile chokes on)."""


class Refused(Exception):
    """The stream asks for more than a layer may have (a header or sparse map too large)."""


class BadValue(Exception):
    """One entry carries a value that cannot be represented or is hostile."""


class BoundedTarInfo(tarfile.TarInfo):
    """A :class:`tarfile.TarInfo` whose header processing is bounded (tarfile's subclass hook)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise Refused(f"an extended header of {self.size} bytes (at most {MAX_HEADER_BYTES})")
        out = super()._proc_member(tarfile_)  # type: ignore[misc]
        if self.type == tarfile.XGLTYPE:
            total = sum(len(k) + len(v) for k, v in tarfile_.pax_headers.items())
            if total > MAX_HEADER_BYTES:
                raise Refused(f"global PAX headers of {total} bytes (at most {MAX_HEADER_BYTES})")
        return out

    def _proc_sparse(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        """Old GNU sparse: tarfile's loop, with the number of extension blocks bounded."""
        structs, isextended, origsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        while isextended:
            if len(structs) > MAX_SPARSE_SEGMENTS:
                raise Refused(f"a sparse file of more than {MAX_SPARSE_SEGMENTS} segments")
            buf = tarfile_.fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[union-attr]
            if len(buf) < tarfile.BLOCKSIZE:
                raise Broken("truncated sparse header")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset = tarfile.nti(buf[pos:pos + 12])  # type: ignore[attr-defined]
                    numbytes = tarfile.nti(buf[pos + 12:pos + 24])  # type: ignore[attr-defined]
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            isextended = bool(buf[504])
        self.sparse = structs
        self.offset_data = tarfile_.fileobj.tell()  # type: ignore[union-attr]
        tarfile_.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = origsize
        return self

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: dict[str, str],
                           tarfile_: tarfile.TarFile) -> None:
        """PAX sparse 1.0: the map before the data, with its length bounded."""
        fileobj = tarfile_.fileobj
        assert fileobj is not None
        buf = fileobj.read(tarfile.BLOCKSIZE)

        def number() -> int:
            nonlocal buf
            while b"\n" not in buf:
                if len(buf) > 32:
                    raise Broken("malformed sparse map")
                more = fileobj.read(tarfile.BLOCKSIZE)
                if not more:
                    raise Broken("truncated sparse map")
                buf += more
            text, buf = buf.split(b"\n", 1)
            if not text.isdigit() or len(text) > 20:
                raise Broken("malformed sparse map")
            return int(text)

        fields = number()
        if fields > MAX_SPARSE_SEGMENTS:
            raise Refused(f"a sparse file of {fields} segments (at most {MAX_SPARSE_SEGMENTS})")
        numbers = [number() for _ in range(fields * 2)]
        next.offset_data = fileobj.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2]))


def _unreadable(exc: BaseException) -> BaseException:
    if isinstance(exc, (Broken, Refused, MicroagentError)):
        return exc
    return Broken(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


@contextlib.contextmanager
def open_stream(stream: IO[bytes]) -> Iterator[tarfile.TarFile]:
    """A streaming reader (``r|``) of ``stream`` with bounded header processing.

    :raises Broken: the first header cannot be read.
    :raises Refused: it is over a limit.
    """
    try:
        tf = tarfile.open(fileobj=stream, mode="r|", errorlevel=2, tarinfo=BoundedTarInfo)
    except Exception as exc:
        raise _unreadable(exc) from exc
    with tf:
        yield tf


def next_member(tf: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The next entry, or ``None`` at the end.

    :raises Broken: a header tarfile cannot parse (whatever it raised).
    :raises Refused: a header over a limit.
    """
    try:
        member = tf.next()
    except Exception as exc:
        raise _unreadable(exc) from exc
    if member is not None:
        for key in ("size", "GNU.sparse.size", "GNU.sparse.realsize"):
            raw = member.pax_headers.get(key)
            # tarfile reads a bad size as 0 and then takes the data for headers
            if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
                raise Broken(f"entry {member.name[:100]!r} has an invalid PAX {key} {raw[:40]!r}")
    return member


def sparse_segments(tf: tarfile.TarFile, member: tarfile.TarInfo) -> list[tuple[int, int]]:
    """The data segments of a sparse ``member``, checked.

    :raises Refused: out of order, overlapping, past the apparent size, or
        more data than the archive stores for the entry.
    """
    assert member.sparse is not None
    stored = tf.offset - member.offset_data
    end = 0
    total = 0
    out = []
    for offset, numbytes in member.sparse:
        if offset < end or numbytes < 0 or offset + numbytes > member.size:
            raise Refused("a sparse map whose segments overlap, are out of order or run past the file's size")
        end = offset + numbytes
        total += numbytes
        if numbytes:
            out.append((offset, numbytes))
    if total > stored:
        raise Refused("a sparse map naming more data than the archive stores")
    return out


def copy_member(tf: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
    """Write the content of a regular-file ``member`` to ``fd`` (holes stay holes).

    :raises Broken: the data ends early.
    :raises Refused: a hostile sparse map.
    """
    if member.sparse is None:
        src = tf.extractfile(member)
        if src is None:
            return
        while chunk := src.read(_CHUNK):
            _write_at(fd, chunk, None)
        return
    fileobj = tf.fileobj
    assert fileobj is not None
    segments = sparse_segments(tf, member)
    fileobj.seek(member.offset_data)
    for offset, numbytes in segments:
        while numbytes:
            chunk = fileobj.read(min(numbytes, _CHUNK))
            if not chunk:
                raise Broken(f"unexpected end of data in {member.name!r}")
            _write_at(fd, chunk, offset)
            offset += len(chunk)
            numbytes -= len(chunk)
    os.ftruncate(fd, member.size)


def _write_at(fd: int, data: bytes, offset: int | None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


# -- entry values ------------------------------------------------------------------


def check_text(value: str, what: str) -> str:
    """A name or link target: no NUL byte (the kernel cannot take one)."""
    if "\x00" in value:
        raise BadValue(f"{what} contains a NUL byte")
    return value


def time_ns(member: tarfile.TarInfo, key: str) -> int | None:
    """``mtime``/``atime`` in nanoseconds: the PAX record (exact) or the header's value.

    ``None`` for an ``atime`` the entry does not carry.

    :raises BadValue: not a finite number within what ext4 stores.
    """
    raw = member.pax_headers.get(key)
    if raw is not None:
        try:
            value = Decimal(raw)
        except (InvalidOperation, ValueError):
            raise BadValue(f"its PAX {key} {raw[:40]!r} is not a number") from None
        if not value.is_finite() or not MIN_TIME_S <= value <= MAX_TIME_S:
            raise BadValue(f"its PAX {key} {raw[:40]!r} is outside the range ext4 can store")
        return int(value * NS)
    if key != "mtime":
        return None
    seconds = member.mtime
    if not math.isfinite(seconds) or not MIN_TIME_S <= seconds <= MAX_TIME_S:
        raise BadValue(f"its mtime {seconds!r} is outside the range ext4 can store")
    return int(seconds) * NS


def owner(member: tarfile.TarInfo) -> tuple[int, int]:
    """``(uid, gid)``, checked against the PAX records too (tarfile maps a bad one to 0).

    :raises BadValue: negative, too large or not a number.
    """
    out = []
    for key, value in (("uid", member.uid), ("gid", member.gid)):
        raw = member.pax_headers.get(key)
        if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) == value):
            raise BadValue(f"its PAX {key} {raw[:40]!r} is not a valid id")
        if not 0 <= value <= MAX_ID:
            raise BadValue(f"its {key} {value} is out of range")
        out.append(value)
    return out[0], out[1]


def device(member: tarfile.TarInfo) -> tuple[int, int]:
    """``(major, minor)`` of a device node, within what Linux numbers allow.

    :raises BadValue: out of range.
    """
    if not (0 <= member.devmajor <= MAX_MAJOR and 0 <= member.devminor <= MAX_MINOR):
        raise BadValue(f"its device number {member.devmajor}:{member.devminor} is out of range")
    return member.devmajor, member.devminor


def check_xattr(name: str, value: bytes) -> None:
    """An extended attribute Linux (and debugfs) can store.

    :raises BadValue: an empty or over-long name, NUL/newline in it, or a value over 64 KiB.
    """
    raw = os.fsencode(name)
    if not raw or len(raw) > MAX_XATTR_NAME or any(b in raw for b in b"\x00\n\r"):
        raise BadValue(f"its extended attribute name {name[:40]!r} is invalid")
    if len(value) > MAX_XATTR_VALUE:
        raise BadValue(f"its extended attribute {name[:40]!r} is longer than {MAX_XATTR_VALUE} bytes")
