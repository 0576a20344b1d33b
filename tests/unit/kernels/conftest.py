"""Synthetic kernel files for the kernels unit tests.

Builders are handed out as fixtures (not imported) so they work under any
pytest import mode.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

EM_X86_64 = 62
EM_AARCH64 = 183


def fake_elf(machine: int = EM_X86_64, size: int = 4096) -> bytes:
    """A 64-bit little-endian ELF header followed by recognisable filler."""
    head = bytearray(64)
    head[0:4] = b"\x7fELF"
    head[4] = 2  # ELFCLASS64
    head[5] = 1  # little-endian
    head[6] = 1
    struct.pack_into("<HHI", head, 16, 2, machine, 1)  # ET_EXEC, machine, version
    body = bytes((i * 7 + 3) % 251 for i in range(size - 64))
    return bytes(head) + body + b"Linux version 6.1.0-test (synthetic) #1\x00"


def compress(data: bytes, how: str) -> bytes:
    """Compress the way the kernel build does (lz4 legacy frame, xz crc32)."""
    if how == "gzip":
        return gzip.compress(data, 9)
    if how == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if how == "bzip2":
        return bz2.compress(data)
    if how == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    tool = {"lz4": ["lz4", "-l", "-9", "-c"], "zstd": ["zstd", "-19", "-c", "-q"]}[how]
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed (apt-get install {tool[0]})")
    return subprocess.run(tool, input=data, capture_output=True, check=True).stdout


def make_bzimage(
    payload_elf: bytes | None = None,
    *,
    compression: str = "gzip",
    release: str = "6.1.0-test",
    setup_sects: int = 3,
    payload_offset: int = 0x40,
    size_field: int | None = None,
) -> bytes:
    """A minimal bzImage: setup header + compressed ELF + le32 size, as the kernel build lays it out."""
    elf = fake_elf() if payload_elf is None else payload_elf
    payload = compress(elf, compression) + struct.pack("<I", len(elf) if size_field is None else size_field)
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    version = f"{release} (synthetic@example) #1 SMP".encode() + b"\x00"
    struct.pack_into("<H", setup, 0x20E, 0x300 - 0x200)
    setup[0x300 : 0x300 + len(version)] = version
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    return bytes(setup) + b"\x00" * payload_offset + payload + b"\x00" * 64


def make_arm64_image(size: int = 4096) -> bytes:
    """A minimal arm64 ``Image``: the 64-byte header with ``ARM\\x64`` at 0x38."""
    head = bytearray(64)
    head[0x38:0x3C] = b"ARM\x64"
    return bytes(head) + b"\x01" * (size - 64)


def make_module(name: str, depends: list[str], *, extra: bytes = b"") -> bytes:
    """A minimal relocatable ELF64 with a ``.modinfo`` section (what modinfo reads)."""
    modinfo = b"".join(
        s.encode() + b"\x00" for s in (f"name={name}", f"depends={','.join(depends)}", "license=GPL")
    ) + extra
    shstrtab = b"\x00.shstrtab\x00.modinfo\x00"
    data_off = 64
    modinfo_off = data_off
    shstr_off = modinfo_off + len(modinfo)
    shoff = (shstr_off + len(shstrtab) + 7) & ~7
    head = bytearray(64)
    head[0:4] = b"\x7fELF"
    head[4], head[5], head[6] = 2, 1, 1
    struct.pack_into("<HHIQQQIHHHHHH", head, 16, 1, EM_X86_64, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    body = bytearray(head) + modinfo + shstrtab
    body += b"\x00" * (shoff - len(body))
    sections = [
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        (1, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0),  # .shstrtab
        (11, 1, 2, 0, modinfo_off, len(modinfo), 0, 0, 1, 0),  # .modinfo
    ]
    for sec in sections:
        body += struct.pack("<IIQQQQIIQQ", *sec)
    return bytes(body)


@pytest.fixture
def bzimage_factory() -> Callable[..., bytes]:
    return make_bzimage


@pytest.fixture
def elf_factory() -> Callable[..., bytes]:
    return fake_elf


@pytest.fixture
def arm64_image_factory() -> Callable[..., bytes]:
    return make_arm64_image


@pytest.fixture
def module_factory() -> Callable[..., bytes]:
    return make_module


@pytest.fixture
def compressor() -> Callable[[bytes, str], bytes]:
    return compress


@pytest.fixture
def synthetic_bzimage(tmp_path: Path) -> Path:
    path = tmp_path / "bzImage-synthetic"
    path.write_bytes(make_bzimage())
    return path
