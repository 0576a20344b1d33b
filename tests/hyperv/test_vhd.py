"""Fixed VHD footers: fields, CHS geometry, checksum, size rounding, on a real ext4 image."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from microagent.errors import Permanent
from microagent.images import vhd
from microagent.images.ext4 import build_ext4

UID = uuid.UUID("11111111-2222-3333-4444-555555555555")
STAMP = vhd.VHD_EPOCH + 1000


@pytest.mark.parametrize("size, geo", [
    (32 * 2**20, (963, 4, 17)),       # 65536 sectors: 3855 cyl*heads at 17 spt, 4 heads
    (64 * 2**20, (963, 8, 17)),       # 7710 at 17 spt, 8 heads
    (1 * 2**30, (2080, 16, 63)),      # 17 and 31 spt overflow: 33288 at 63 spt
    (127 * 2**30, (65278, 16, 255)),  # past 65535*16*63 sectors: 255 spt
])
def test_chs_geometry_per_spec(size, geo) -> None:
    g = vhd.chs_geometry(size)
    assert (g.cylinders, g.heads, g.sectors_per_track) == geo
    assert g.cylinders * g.heads * g.sectors_per_track * 512 <= size


def test_footer_fields_and_checksum() -> None:
    raw = vhd.build_footer(32 * 2**20, unique_id=UID, timestamp=STAMP)
    assert len(raw) == 512 and raw[:8] == b"conectix"
    f = vhd.parse_footer(raw)
    assert (f.features, f.format_version, f.data_offset) == (2, 0x10000, 0xFFFFFFFFFFFFFFFF)
    assert (f.timestamp, f.creator_app, f.creator_host_os) == (1000, b"mcag", b"Wi2k")
    assert f.original_size == f.current_size == 32 * 2**20 and f.disk_type == 2
    assert f.unique_id == UID and f.saved_state == 0 and raw[85:] == bytes(427)
    # the checksum is the one's complement of the byte sum with the field zeroed
    assert f.checksum == (~(sum(raw) - sum(raw[64:68]))) & 0xFFFFFFFF
    broken = raw[:100] + b"\x01" + raw[101:]
    with pytest.raises(Permanent, match="checksum"):
        vhd.parse_footer(broken)


def test_bad_sizes() -> None:
    with pytest.raises(Permanent):
        vhd.build_footer(1000)
    with pytest.raises(Permanent):
        vhd.build_footer(vhd.MAX_SIZE + 512)
    assert vhd.aligned_size(1) == 2**20 and vhd.aligned_size(2**20) == 2**20 and vhd.aligned_size(2**20 + 1) == 2**21


def test_real_ext4_converts_byte_identical(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("ws1\n")
    ext4 = build_ext4(tree, tmp_path / "rootfs.ext4", key="vhd-test", size_bytes=32 * 2**20 + 4096 * 3)
    out = vhd.raw_to_fixed_vhd(ext4, tmp_path / "ws" / "rootfs.vhd", unique_id=UID, timestamp=STAMP)
    data, src = out.read_bytes(), ext4.read_bytes()
    size = vhd.aligned_size(len(src))
    assert size == 33 * 2**20  # rounded up to the next MiB
    assert len(data) == size + 512
    assert data[:len(src)] == src  # the raw part is the ext4 image, byte for byte
    assert data[len(src):size] == bytes(size - len(src))
    footer = vhd.parse_footer(data[-512:])
    assert footer.current_size == size and footer.geometry == vhd.chs_geometry(size)
    assert not list(out.parent.glob(".*.tmp"))


def test_missing_source(tmp_path: Path) -> None:
    from microagent.errors import NotFound

    with pytest.raises(NotFound):
        vhd.raw_to_fixed_vhd(tmp_path / "nope", tmp_path / "x.vhd")
    assert not (tmp_path / "x.vhd").exists()
