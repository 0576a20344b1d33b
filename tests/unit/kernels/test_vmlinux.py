"""bzImage header parsing, payload decompression and kernel format detection."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from microagent.errors import NotFound, Permanent
from microagent.kernels.vmlinux import (
    KernelFormat,
    compression_of,
    detect_kernel_format,
    elf_machine,
    extract_vmlinux,
    kernel_release,
    parse_bzimage_header,
    vmlinux_from_bzimage,
)


def test_header_fields_from_synthetic_setup_header(bzimage_factory):
    data = bzimage_factory(setup_sects=5, payload_offset=0x123, release="6.9.0-x")
    header = parse_bzimage_header(data)
    assert header.setup_sects == 5
    assert header.protocol == 0x20F
    assert header.payload_offset == 0x123
    assert header.setup_size == 6 * 512
    assert header.payload_start == 6 * 512 + 0x123
    assert data[header.payload_start : header.payload_start + 2] == b"\x1f\x8b"
    assert header.release == "6.9.0-x"
    assert header.kernel_version.startswith("6.9.0-x (synthetic")


def test_setup_sects_zero_means_four(bzimage_factory):
    data = bytearray(bzimage_factory(setup_sects=4))
    data[0x1F1] = 0
    assert parse_bzimage_header(bytes(data)).setup_sects == 4


@pytest.mark.parametrize("compression", ["gzip", "xz", "bzip2", "lzma", "lz4", "zstd"])
def test_extract_vmlinux_for_each_compression(tmp_path, bzimage_factory, elf_factory, compression):
    elf = elf_factory(size=64 * 1024)
    src = tmp_path / "bzImage"
    src.write_bytes(bzimage_factory(elf, compression=compression))
    out = extract_vmlinux(src, tmp_path / "out" / "vmlinux")
    assert out.read_bytes() == elf
    assert elf_machine(out.read_bytes()) == "x86_64"
    assert compression_of(src.read_bytes()[parse_bzimage_header(src.read_bytes()).payload_start :]) == compression


def test_size_trailer_mismatch_is_permanent(bzimage_factory):
    with pytest.raises(Permanent, match="decompressed vmlinux"):
        vmlinux_from_bzimage(bzimage_factory(size_field=12345))


def test_payload_that_is_not_x86_elf_is_rejected(bzimage_factory, elf_factory):
    with pytest.raises(Permanent, match="aarch64, not x86_64"):
        vmlinux_from_bzimage(bzimage_factory(elf_factory(machine=183)))
    with pytest.raises(Permanent, match="not an ELF"):
        vmlinux_from_bzimage(bzimage_factory(b"just some bytes, not an elf" * 10))


def test_corrupt_payload_is_permanent(bzimage_factory):
    data = bytearray(bzimage_factory())
    start = parse_bzimage_header(bytes(data)).payload_start
    data[start + 20 : start + 60] = b"\xff" * 40
    with pytest.raises(Permanent):
        vmlinux_from_bzimage(bytes(data))


def test_truncated_bzimage_is_permanent(bzimage_factory):
    data = bzimage_factory()
    with pytest.raises(Permanent, match="beyond the end"):
        parse_bzimage_header(data[: len(data) - 200])


def test_not_a_bzimage(tmp_path):
    with pytest.raises(Permanent, match="HdrS"):
        parse_bzimage_header(b"\x00" * 4096)
    random_file = tmp_path / "random"
    random_file.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(Permanent, match="not a kernel image"):
        detect_kernel_format(random_file)
    with pytest.raises(Permanent, match="HdrS"):
        extract_vmlinux(random_file, tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()


def test_old_boot_protocol_rejected(bzimage_factory):
    data = bytearray(bzimage_factory())
    struct.pack_into("<H", data, 0x206, 0x207)
    with pytest.raises(Permanent, match="too old"):
        parse_bzimage_header(bytes(data))


def test_detect_formats(tmp_path, bzimage_factory, arm64_image_factory, elf_factory):
    cases = {
        "bz": (bzimage_factory(), KernelFormat.BZIMAGE, "x86_64"),
        "arm": (arm64_image_factory(), KernelFormat.ARM64_IMAGE, "aarch64"),
        "armgz": (gzip.compress(arm64_image_factory()), KernelFormat.ARM64_IMAGE_GZ, "aarch64"),
        "elf": (elf_factory(), KernelFormat.ELF, "x86_64"),
        "elfarm": (elf_factory(machine=183), KernelFormat.ELF, "aarch64"),
    }
    for name, (data, fmt, arch) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert detect_kernel_format(path) is fmt, name
        assert fmt.architecture(path) == arch, name


def test_detect_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        detect_kernel_format(tmp_path / "nope")


def test_elf_for_other_machine_or_class(elf_factory):
    with pytest.raises(Permanent, match="machine 40"):
        elf_machine(elf_factory(machine=40))
    elf32 = bytearray(elf_factory())
    elf32[4] = 1
    with pytest.raises(Permanent, match="64-bit"):
        elf_machine(bytes(elf32))


def test_kernel_release_of_each_format(tmp_path, bzimage_factory, elf_factory):
    bz = tmp_path / "bz"
    bz.write_bytes(bzimage_factory(release="6.1.0-56-cloud-amd64"))
    assert kernel_release(bz) == "6.1.0-56-cloud-amd64"
    elf = tmp_path / "elf"
    elf.write_bytes(elf_factory())
    assert kernel_release(elf) == "6.1.0-test"


def test_extract_is_atomic_no_partial_output_on_failure(tmp_path, bzimage_factory):
    out = tmp_path / "vmlinux"
    out.write_bytes(b"previous")
    bad = tmp_path / "bad"
    bad.write_bytes(bzimage_factory(size_field=1))
    with pytest.raises(Permanent):
        extract_vmlinux(bad, out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_bzimage_is_not_found(tmp_path: Path):
    with pytest.raises(NotFound):
        extract_vmlinux(tmp_path / "missing", tmp_path / "out")
