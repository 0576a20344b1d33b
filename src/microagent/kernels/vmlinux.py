"""Kernel image formats: bzImage headers, arm64 Image headers, vmlinux ELF.

Owns recognising what a kernel file is (and for which architecture) and
turning an x86 bzImage into the uncompressed ``vmlinux`` ELF that Firecracker
boots.  It does not know where kernels are installed (see
:mod:`microagent.kernels.store`).

An x86 bzImage is a real-mode setup area of ``(setup_sects + 1) * 512`` bytes
followed by the protected-mode part, inside which the compressed kernel sits
at ``payload_offset`` for ``payload_length`` bytes (boot protocol >= 2.08).
The payload is ``vmlinux`` (stripped, still an ELF) compressed with gzip, xz,
lzma, bzip2, lzo, lz4 (legacy frame; Debian's choice) or zstd, followed by a
4-byte little-endian uncompressed size appended by the kernel build.
"""

from __future__ import annotations

import bz2
import enum
import lzma
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from msgspec import Struct

from microagent.errors import NotFound, Permanent
from microagent.fsutil import atomic_write

__all__ = [
    "BzImageHeader",
    "KernelFormat",
    "compression_of",
    "decompress_payload",
    "detect_kernel_format",
    "elf_machine",
    "extract_vmlinux",
    "kernel_architecture",
    "kernel_release",
    "parse_bzimage_header",
    "vmlinux_from_bzimage",
]

# Offsets into the x86 boot protocol setup header (Documentation/arch/x86/boot.rst).
SETUP_SECTS_OFFSET = 0x1F1
BOOT_FLAG_OFFSET = 0x1FE  # 0xAA55
HEADER_MAGIC_OFFSET = 0x202  # b"HdrS"
VERSION_OFFSET = 0x206
KERNEL_VERSION_OFFSET = 0x20E
PAYLOAD_OFFSET_OFFSET = 0x248
PAYLOAD_LENGTH_OFFSET = 0x24C
HEADER_END = 0x250

ARM64_MAGIC_OFFSET = 0x38
ARM64_MAGIC = b"ARM\x64"

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
EM_AARCH64 = 183
ELF_MACHINES = {EM_X86_64: "x86_64", EM_AARCH64: "aarch64"}

COMPRESSION_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x02\x21\x4c\x18", "lz4"),  # lz4 legacy frame, what the kernel build emits
    (b"\x04\x22\x4d\x18", "lz4"),  # lz4 modern frame
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x89LZO", "lzo"),
    (b"\x5d\x00\x00", "lzma"),
)

DECOMPRESS_TOOLS = {"lz4": "lz4", "zstd": "zstd", "lzo": "lzop"}
DECOMPRESS_PACKAGES = {"lz4": "lz4", "zstd": "zstd", "lzo": "lzop"}


class KernelFormat(enum.Enum):
    """What a kernel file is, as far as booting it goes."""

    BZIMAGE = "bzImage"  # x86 (64-bit) self-decompressing image; QEMU boots it
    ARM64_IMAGE = "arm64-Image"  # uncompressed arm64 Image
    ARM64_IMAGE_GZ = "arm64-Image.gz"  # gzip-compressed arm64 Image (Debian's vmlinuz on arm64)
    ELF = "vmlinux"  # uncompressed ELF; Firecracker on x86_64 boots it

    def architecture(self, path: Path | None = None) -> str:
        """The architecture this format implies (ELF needs the file to tell).

        :param path: the file, required for :attr:`ELF`.
        :raises Permanent: the ELF is not for a supported machine.
        """
        if self is KernelFormat.BZIMAGE:
            return "x86_64"
        if self in (KernelFormat.ARM64_IMAGE, KernelFormat.ARM64_IMAGE_GZ):
            return "aarch64"
        if path is None:
            raise ValueError("an ELF kernel needs its file to tell the architecture")
        with open(path, "rb") as fh:
            return elf_machine(fh.read(64))


class BzImageHeader(Struct, frozen=True):
    """The parts of the x86 setup header that locate the compressed kernel."""

    setup_sects: int
    protocol: int  # e.g. 0x20f for boot protocol 2.15
    payload_offset: int
    payload_length: int
    kernel_version: str  # the uname string (release first), "" if absent

    @property
    def setup_size(self) -> int:
        """Bytes before the protected-mode kernel: ``(setup_sects + 1) * 512``."""
        return (self.setup_sects + 1) * 512

    @property
    def payload_start(self) -> int:
        """File offset of the compressed payload."""
        return self.setup_size + self.payload_offset

    @property
    def release(self) -> str:
        """The kernel release (``uname -r``), the first word of the version string."""
        return self.kernel_version.split(" ", 1)[0] if self.kernel_version else ""


def _read_cstring(data: bytes, offset: int, limit: int = 256) -> str:
    end = data.find(b"\x00", offset, offset + limit)
    if end < 0:
        return ""
    return data[offset:end].decode("ascii", "replace")


def parse_bzimage_header(data: bytes) -> BzImageHeader:
    """Parse the setup header of an x86 bzImage.

    :param data: the bzImage bytes (at least the setup area; the whole file to
        read the kernel version string and check the payload bounds).
    :raises Permanent: not a bzImage, boot protocol too old to carry a payload
        location, or the payload lies outside the file.
    """
    if len(data) < HEADER_END or data[HEADER_MAGIC_OFFSET : HEADER_MAGIC_OFFSET + 4] != b"HdrS":
        raise Permanent(
            "kernel file is not an x86 bzImage (no 'HdrS' setup header)",
            "pass a bzImage (Debian's /boot/vmlinuz-*), a vmlinux ELF, or use the Debian package",
        )
    setup_sects = data[SETUP_SECTS_OFFSET] or 4  # 0 means 4 by the boot protocol
    (protocol,) = struct.unpack_from("<H", data, VERSION_OFFSET)
    if protocol < 0x208:
        raise Permanent(
            f"bzImage boot protocol {protocol >> 8}.{protocol & 0xFF:02d} is too old (need >= 2.08)",
            "use a kernel newer than 2.6.26",
        )
    payload_offset, payload_length = struct.unpack_from("<II", data, PAYLOAD_OFFSET_OFFSET)
    (kv_ptr,) = struct.unpack_from("<H", data, KERNEL_VERSION_OFFSET)
    kernel_version = _read_cstring(data, kv_ptr + 0x200) if kv_ptr and kv_ptr + 0x200 < len(data) else ""
    header = BzImageHeader(setup_sects, protocol, payload_offset, payload_length, kernel_version)
    if len(data) > HEADER_END + 0x100 and header.payload_start + payload_length > len(data):
        raise Permanent(
            "bzImage payload lies beyond the end of the file (truncated kernel?)",
            "download the kernel again",
        )
    return header


def compression_of(payload: bytes) -> str:
    """Name the compression of a bzImage payload from its magic bytes.

    :raises Permanent: no known compression magic.
    """
    for magic, name in COMPRESSION_MAGICS:
        if payload.startswith(magic):
            return name
    raise Permanent(
        f"bzImage payload has an unknown compression (magic {payload[:6].hex()})",
        "use a kernel compressed with gzip, xz, lzma, bzip2, lz4 or zstd",
    )


def _decompress_with_tool(name: str, payload: bytes) -> bytes:
    tool = DECOMPRESS_TOOLS[name]
    exe = shutil.which(tool)
    if exe is None:
        raise NotFound(
            f"'{tool}' is needed to decompress this {name} kernel and is not on PATH",
            f"install it: apt-get install {DECOMPRESS_PACKAGES[name]}",
        )
    try:
        proc = subprocess.run([exe, "-dc"], input=payload, capture_output=True, check=False)
    except OSError as exc:
        raise Permanent(f"could not run {tool}: {exc}", f"check the {tool} installation") from exc
    if proc.returncode != 0 or not proc.stdout:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise Permanent(
            f"{tool} failed to decompress the kernel payload: {detail[-1] if detail else 'no output'}",
            "the kernel file is corrupt; download it again",
        )
    return proc.stdout


def decompress_payload(payload: bytes, compression: str | None = None) -> bytes:
    """Decompress a bzImage payload (without its trailing 4-byte size).

    gzip, xz, lzma and bzip2 use the standard library; lz4, zstd and lzo use
    the ``lz4``/``zstd``/``lzop`` command line tools.

    :param compression: as named by :func:`compression_of`; detected if ``None``.
    :raises Permanent: unknown compression or corrupt data.
    :raises NotFound: the needed command line tool is missing.
    """
    name = compression or compression_of(payload)
    try:
        if name == "gzip":
            return zlib.decompressobj(wbits=31).decompress(payload)
        if name == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        if name == "lzma":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
        if name == "bzip2":
            return bz2.BZ2Decompressor().decompress(payload)
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise Permanent(
            f"kernel payload is not valid {name} data: {exc}", "the kernel file is corrupt; download it again"
        ) from exc
    if name in DECOMPRESS_TOOLS:
        return _decompress_with_tool(name, payload)
    raise Permanent(f"unsupported kernel compression '{name}'", "use a gzip, xz, lz4 or zstd compressed kernel")


def elf_machine(data: bytes) -> str:
    """The architecture of a 64-bit little-endian ELF (``x86_64`` or ``aarch64``).

    :param data: at least the first 20 bytes of the file.
    :raises Permanent: not an ELF64 little-endian file, or an unsupported machine.
    """
    if len(data) < 20 or not data.startswith(ELF_MAGIC):
        raise Permanent("file is not an ELF binary", "pass a vmlinux ELF or a bzImage")
    if data[4] != 2 or data[5] != 1:
        raise Permanent("kernel ELF is not 64-bit little-endian", "use a 64-bit x86_64 or aarch64 kernel")
    (machine,) = struct.unpack_from("<H", data, 18)
    arch = ELF_MACHINES.get(machine)
    if arch is None:
        raise Permanent(f"kernel ELF is for machine {machine}, not x86_64 or aarch64", "use a matching kernel")
    return arch


def _looks_like_arm64_image(head: bytes) -> bool:
    return len(head) >= ARM64_MAGIC_OFFSET + 4 and head[ARM64_MAGIC_OFFSET : ARM64_MAGIC_OFFSET + 4] == ARM64_MAGIC


def detect_kernel_format(path: Path) -> KernelFormat:
    """Say what kind of kernel file ``path`` is.

    :raises NotFound: the file does not exist.
    :raises Permanent: the file is none of bzImage, arm64 Image (plain or
        gzip) or 64-bit ELF.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_END)
    except FileNotFoundError as exc:
        raise NotFound(f"kernel file {path} does not exist", "check the path") from exc
    except OSError as exc:
        raise Permanent(f"cannot read kernel file {path}: {exc.strerror}", "check its permissions") from exc
    if head.startswith(ELF_MAGIC):
        elf_machine(head)
        return KernelFormat.ELF
    if len(head) >= HEADER_END and head[HEADER_MAGIC_OFFSET : HEADER_MAGIC_OFFSET + 4] == b"HdrS":
        return KernelFormat.BZIMAGE
    if _looks_like_arm64_image(head):
        return KernelFormat.ARM64_IMAGE
    if head.startswith(b"\x1f\x8b"):
        try:
            with open(path, "rb") as fh:
                inner = zlib.decompressobj(wbits=31).decompress(fh.read(64 * 1024), 128)
        except (OSError, zlib.error):
            inner = b""
        if _looks_like_arm64_image(inner):
            return KernelFormat.ARM64_IMAGE_GZ
    raise Permanent(
        f"{path} is not a kernel image (not a bzImage, arm64 Image or vmlinux ELF)",
        "pass a kernel file such as Debian's /boot/vmlinuz-*, or install from the Debian package",
    )


def kernel_release(path: Path) -> str:
    """Best-effort kernel release (``uname -r``) of a kernel file; ``""`` if unknown.

    Reads the bzImage header string, or searches an ELF / arm64 Image for the
    ``Linux version `` banner.

    :raises NotFound: the file does not exist.
    :raises Permanent: the file is not a kernel.
    """
    fmt = detect_kernel_format(path)
    data = path.read_bytes()
    if fmt is KernelFormat.BZIMAGE:
        return parse_bzimage_header(data).release
    if fmt is KernelFormat.ARM64_IMAGE_GZ:
        data = zlib.decompressobj(wbits=31).decompress(data)
    marker = b"Linux version "
    at = data.find(marker)
    if at < 0:
        return ""
    end = data.find(b" ", at + len(marker))
    return data[at + len(marker) : end].decode("ascii", "replace") if end > 0 else ""


def vmlinux_from_bzimage(data: bytes) -> bytes:
    """Decompress the vmlinux ELF out of bzImage bytes and validate it.

    :raises Permanent: not a bzImage, corrupt payload, or the result is not a
        64-bit x86_64 ELF.
    :raises NotFound: a needed decompressor tool is missing.
    """
    header = parse_bzimage_header(data)
    payload = data[header.payload_start : header.payload_start + header.payload_length]
    if len(payload) < 8:
        raise Permanent("bzImage has an empty payload", "the kernel file is corrupt; download it again")
    # The kernel build appends the uncompressed size (le32) after the compressed stream.
    (expected_size,) = struct.unpack_from("<I", payload, len(payload) - 4)
    compression = compression_of(payload)
    vmlinux = decompress_payload(payload[:-4], compression)
    arch = elf_machine(vmlinux[:64])
    if arch != "x86_64":
        raise Permanent(f"bzImage payload is an ELF for {arch}, not x86_64", "use an x86_64 kernel")
    if len(vmlinux) != expected_size:
        raise Permanent(
            f"decompressed vmlinux is {len(vmlinux)} bytes, the bzImage says {expected_size}",
            "the kernel file is corrupt; download it again",
        )
    return vmlinux


def extract_vmlinux(bzimage: Path, out: Path) -> Path:
    """Write the uncompressed vmlinux ELF inside ``bzimage`` to ``out`` atomically.

    :returns: ``out``.
    :raises NotFound: ``bzimage`` does not exist, or a decompressor is missing.
    :raises Permanent: not a bzImage, corrupt, or not an x86_64 ELF inside.
    """
    try:
        data = bzimage.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"kernel file {bzimage} does not exist", "check the path") from exc
    except OSError as exc:
        raise Permanent(f"cannot read kernel file {bzimage}: {exc.strerror}", "check its permissions") from exc
    vmlinux = vmlinux_from_bzimage(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, vmlinux)
    return out


def kernel_architecture(path: Path) -> str:
    """The architecture a kernel file boots (``x86_64`` or ``aarch64``), from its header.

    :raises NotFound: the file does not exist.
    :raises Permanent: the file is not a kernel.
    """
    return detect_kernel_format(path).architecture(path)
