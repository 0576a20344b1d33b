"""Fixed VHD disks from raw images (the Hyper-V root disk, ``rootfs.vhd``).

A *fixed* VHD is the raw disk followed by one 512-byte footer (Microsoft
"Virtual Hard Disk Image Format Specification", v1.0, "Hard Disk Footer
Format" and appendix "CHS Calculation").  Hyper-V attaches such a file as a
SCSI ``VirtualDisk``; the guest sees the raw part byte for byte, so the
ext4 image built by :mod:`.ext4` is the disk unchanged.

This module owns the footer (fields, geometry, checksum) and the atomic
conversion ``ext4 -> rootfs.vhd``.  It does not know about Hyper-V itself.

Footer layout (all integers big-endian)::

    offset size field
    0      8    cookie                "conectix"
    8      4    features              0x00000002 (the reserved bit, always set)
    12     4    file format version   0x00010000
    16     8    data offset           0xFFFFFFFFFFFFFFFF (fixed disks have none)
    24     4    time stamp            seconds since 2000-01-01 00:00:00 UTC
    28     4    creator application   b"mcag"
    32     4    creator version       0x00010000
    36     4    creator host OS       b"Wi2k" (the spec defines only Wi2k and "Mac ")
    40     8    original size         bytes of the disk
    48     8    current size          bytes of the disk
    56     2    cylinders             } CHS geometry computed by the spec's
    58     1    heads                 } algorithm from current size
    59     1    sectors per track     }
    60     4    disk type             2 = fixed
    64     4    checksum              one's complement of the byte sum of the
                                      footer with this field zeroed
    68     16   unique id             a UUID
    84     1    saved state           0
    85     427  reserved              zeros
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from microagent.errors import NotFound, Permanent, ResourceExhausted
from microagent.fsutil import atomic_writer

FOOTER_SIZE = 512
SECTOR = 512
#: Hyper-V and Azure expect the virtual size of a VHD to be a whole number
#: of MiB; smaller images are zero-padded up to the next MiB.
ALIGN = 1024 * 1024
#: The largest VHD the format allows (the spec's CHS cap and Hyper-V's limit).
MAX_SIZE = 2040 * 1024 * 1024 * 1024
COOKIE = b"conectix"
FEATURES = 0x00000002
FORMAT_VERSION = 0x00010000
FIXED_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
CREATOR_APP = b"mcag"
CREATOR_VERSION = 0x00010000
CREATOR_HOST_OS = b"Wi2k"
DISK_TYPE_FIXED = 2
#: 2000-01-01 00:00:00 UTC, the VHD time epoch, as a Unix time.
VHD_EPOCH = 946684800
_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB427s")
_CHECKSUM_OFFSET = 64
_COPY_CHUNK = 1024 * 1024

assert _FOOTER.size == FOOTER_SIZE


@dataclass(frozen=True)
class Geometry:
    """Cylinders, heads and sectors per track of a VHD (spec appendix)."""

    cylinders: int
    heads: int
    sectors_per_track: int


@dataclass(frozen=True)
class Footer:
    """The decoded fields of a VHD footer."""

    cookie: bytes
    features: int
    format_version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_host_os: bytes
    original_size: int
    current_size: int
    geometry: Geometry
    disk_type: int
    checksum: int
    unique_id: uuid.UUID
    saved_state: int


def chs_geometry(size_bytes: int) -> Geometry:
    """The CHS geometry of a disk of ``size_bytes``, by the VHD spec's algorithm."""
    total = size_bytes // SECTOR
    total = min(total, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_times_heads = total // spt
    else:
        spt = 17
        cyl_times_heads = total // spt
        heads = max((cyl_times_heads + 1023) // 1024, 4)
        if cyl_times_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_times_heads = total // spt
        if cyl_times_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_times_heads = total // spt
    return Geometry(cyl_times_heads // heads, heads, spt)


def checksum(footer: bytes) -> int:
    """One's complement of the byte sum of ``footer`` with its checksum field zeroed."""
    data = footer[:_CHECKSUM_OFFSET] + b"\0\0\0\0" + footer[_CHECKSUM_OFFSET + 4:]
    return (~sum(data)) & 0xFFFFFFFF


def aligned_size(raw_size: int) -> int:
    """The virtual disk size for a raw image of ``raw_size`` bytes (next whole MiB)."""
    return max(ALIGN, (raw_size + ALIGN - 1) // ALIGN * ALIGN)


def build_footer(size_bytes: int, *, unique_id: uuid.UUID | None = None,
                 timestamp: float | None = None) -> bytes:
    """The 512-byte footer of a fixed VHD whose disk is ``size_bytes`` long.

    :param size_bytes: the virtual disk size, a multiple of 512.
    :param unique_id: the disk's UUID (random when omitted).
    :param timestamp: Unix time of creation (now when omitted).
    :raises Permanent: for a size that is not a positive multiple of 512 or exceeds 2040 GiB.
    """
    if size_bytes <= 0 or size_bytes % SECTOR:
        raise Permanent(f"a VHD disk size must be a positive multiple of {SECTOR} bytes, got {size_bytes}")
    if size_bytes > MAX_SIZE:
        raise Permanent(f"a VHD disk cannot exceed 2040 GiB, got {size_bytes} bytes",
                        "use a smaller --disk-size")
    geo = chs_geometry(size_bytes)
    stamp = int((time.time() if timestamp is None else timestamp) - VHD_EPOCH) & 0xFFFFFFFF
    uid = unique_id or uuid.uuid4()
    fields = [COOKIE, FEATURES, FORMAT_VERSION, FIXED_DATA_OFFSET, stamp, CREATOR_APP,
              CREATOR_VERSION, CREATOR_HOST_OS, size_bytes, size_bytes, geo.cylinders, geo.heads,
              geo.sectors_per_track, DISK_TYPE_FIXED, 0, uid.bytes, 0, b"\0" * 427]
    unsummed = _FOOTER.pack(*fields)
    fields[14] = checksum(unsummed)
    return _FOOTER.pack(*fields)


def parse_footer(data: bytes) -> Footer:
    """Decode a footer (the last 512 bytes of a VHD).

    :raises Permanent: when it is not 512 bytes, lacks the cookie or fails its checksum.
    """
    if len(data) != FOOTER_SIZE:
        raise Permanent(f"a VHD footer is {FOOTER_SIZE} bytes, got {len(data)}")
    f = _FOOTER.unpack(data)
    if f[0] != COOKIE:
        raise Permanent(f"not a VHD footer: cookie {f[0]!r}")
    if f[14] != checksum(data):
        raise Permanent(f"VHD footer checksum mismatch: stored {f[14]:#010x}, computed {checksum(data):#010x}")
    return Footer(cookie=f[0], features=f[1], format_version=f[2], data_offset=f[3], timestamp=f[4],
                  creator_app=f[5], creator_version=f[6], creator_host_os=f[7], original_size=f[8],
                  current_size=f[9], geometry=Geometry(f[10], f[11], f[12]), disk_type=f[13],
                  checksum=f[14], unique_id=uuid.UUID(bytes=f[15]), saved_state=f[16])


def raw_to_fixed_vhd(src: Path, dst: Path, *, unique_id: uuid.UUID | None = None,
                     timestamp: float | None = None) -> Path:
    """Write ``dst``: ``src`` byte for byte, zero padding to a whole MiB, then the footer.

    Zero runs are skipped with ``seek`` so the result stays sparse where the
    file system allows.  Written to a temp file beside ``dst``, fsynced, then
    renamed into place; a failure leaves no partial ``dst``.

    :raises NotFound: when ``src`` does not exist.
    :raises ResourceExhausted: when the disk fills up.
    :raises Permanent: for any other I/O failure or an oversized image.
    """
    try:
        raw_size = src.stat().st_size
    except FileNotFoundError as exc:
        raise NotFound(f"disk image {src} does not exist", "build the workspace rootfs first") from exc
    size = aligned_size(raw_size)
    footer = build_footer(size, unique_id=unique_id, timestamp=timestamp)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(src, "rb") as rf, atomic_writer(dst) as wf:
            zero = bytes(_COPY_CHUNK)
            while True:
                chunk = rf.read(_COPY_CHUNK)
                if not chunk:
                    break
                if chunk == zero[:len(chunk)]:
                    wf.seek(len(chunk), os.SEEK_CUR)
                else:
                    wf.write(chunk)
            wf.truncate(size)
            wf.seek(size)
            wf.write(footer)
    except OSError as exc:
        if exc.errno == 28:
            raise ResourceExhausted(f"no space left writing {dst}", "free disk space") from exc
        raise Permanent(f"cannot write {dst}: {exc.strerror or exc}") from exc
    return dst
