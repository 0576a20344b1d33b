"""Module closure and load order from modules.dep / .modinfo, and module decompression."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from microagent.errors import NotFound, Permanent
from microagent.kernels.modules import (
    DEFAULT_GUEST_MODULES,
    load_conditions,
    load_module_index,
    modinfo,
    module_bytes,
    module_name,
    parse_modules_builtin,
    parse_modules_dep,
    resolve_modules,
    write_modules,
)

# The dependency shape of Debian's cloud kernel (docs/architecture.md, "Facts about our hosts").
DEBIAN_LIKE = {
    "kernel/drivers/virtio/virtio_ring": [],
    "kernel/drivers/virtio/virtio": ["virtio_ring"],
    "kernel/drivers/virtio/virtio_mmio": ["virtio", "virtio_ring"],
    "kernel/drivers/block/virtio_blk": ["virtio", "virtio_ring"],
    "kernel/drivers/char/virtio_console": ["virtio", "virtio_ring"],
    "kernel/net/core/failover": [],
    "kernel/drivers/net/net_failover": ["failover"],
    "kernel/drivers/net/virtio_net": ["virtio_ring", "virtio", "net_failover"],
    "kernel/net/vmw_vsock/vsock": [],
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common": ["vsock"],
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport": [
        "virtio", "vmw_vsock_virtio_transport_common", "virtio_ring", "vsock",
    ],
    "kernel/drivers/char/hw_random/virtio-rng": ["virtio", "virtio_ring"],
    "kernel/fs/fuse/fuse": [],
}
EXPECTED_ORDER = [
    "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console",
    "failover", "net_failover", "virtio_net",
    "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
]  # fmt: skip


def _compress(data: bytes, suffix: str) -> bytes:
    if suffix == ".ko.xz":
        return lzma.compress(data, check=lzma.CHECK_CRC32)
    if suffix == ".ko.gz":
        return gzip.compress(data)
    if suffix == ".ko.zst":
        if shutil.which("zstd") is None:
            pytest.skip("zstd is not installed")
        return subprocess.run(["zstd", "-c", "-q"], input=data, capture_output=True, check=True).stdout
    return data


def _tree(root: Path, module_factory, *, suffix: str = ".ko", with_dep: bool, builtin: list[str] = ()) -> Path:
    mdir = root / "lib" / "modules" / "6.1.0-test"
    lines = []
    suffixes = [".ko", ".ko.xz", ".ko.zst"] if suffix == "mixed" else [suffix]
    for i, (rel, deps) in enumerate(DEBIAN_LIKE.items()):
        sfx = suffixes[i % len(suffixes)]
        path = mdir / (rel + sfx)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_compress(module_factory(module_name(rel), deps), sfx))
        lines.append((rel + sfx, deps))
    if with_dep:
        by_name = {module_name(r): r for r, _ in lines}
        text = "".join(f"{r}: {' '.join(by_name[d] for d in deps)}\n" for r, deps in lines)
        (mdir / "modules.dep").write_text(text)
    (mdir / "modules.builtin").write_text("".join(f"kernel/x/{b}.ko\n" for b in builtin))
    return mdir


@pytest.mark.parametrize("with_dep", [True, False], ids=["modules.dep", "modinfo"])
def test_closure_in_load_order(tmp_path, module_factory, with_dep):
    index = load_module_index(_tree(tmp_path, module_factory, with_dep=with_dep))
    order = [m.name for m in resolve_modules(index)]
    assert order == EXPECTED_ORDER
    # every module comes after all of its dependencies
    pos = {n: i for i, n in enumerate(order)}
    for mod in resolve_modules(index):
        assert all(pos[d] < pos[mod.name] for d in mod.depends)


def test_builtin_modules_are_skipped(tmp_path, module_factory):
    mdir = _tree(tmp_path, module_factory, with_dep=True, builtin=["virtio_ring", "virtio", "failover"])
    order = [m.name for m in resolve_modules(load_module_index(mdir))]
    assert "virtio_ring" not in order and "virtio" not in order and "failover" not in order
    assert order[:3] == ["virtio_mmio", "virtio_blk", "virtio_console"]


def test_compressed_modules_decompressed_to_plain_ko(tmp_path, module_factory):
    mdir = _tree(tmp_path, module_factory, suffix="mixed", with_dep=False)
    assert {p.name.split(".", 1)[1] for p in mdir.rglob("*.ko*")} == {"ko", "ko.xz", "ko.zst"}
    mods = resolve_modules(load_module_index(mdir))
    written = write_modules(mods, tmp_path / "out")
    assert [p.name for p in written] == [f"{i:02d}-{n}.ko" for i, n in enumerate(EXPECTED_ORDER)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in written]
    for path, name in zip(written, EXPECTED_ORDER):
        data = path.read_bytes()
        assert data.startswith(b"\x7fELF")
        assert modinfo(data)["name"] == name


def test_gzip_module(tmp_path, module_factory):
    path = tmp_path / "m.ko.gz"
    path.write_bytes(gzip.compress(module_factory("m", [])))
    assert modinfo(module_bytes(path)) == {"name": "m", "depends": "", "license": "GPL"}


def test_missing_wanted_module_is_permanent(tmp_path, module_factory):
    index = load_module_index(_tree(tmp_path, module_factory, with_dep=True))
    with pytest.raises(Permanent, match="no module 9p"):
        resolve_modules(index, ["9p"])


def test_missing_optional_module_is_skipped(tmp_path, module_factory):
    mdir = tmp_path / "m" / "6.1"
    mdir.mkdir(parents=True)
    (mdir / "a.ko").write_bytes(module_factory("a", []))
    assert [m.name for m in resolve_modules(load_module_index(mdir), ["virtio", "a"])] == ["a"]


def test_missing_dependency_names_the_dependent(tmp_path, module_factory):
    mdir = tmp_path / "m" / "6.1"
    mdir.mkdir(parents=True)
    (mdir / "a.ko").write_bytes(module_factory("a", ["ghost"]))
    with pytest.raises(Permanent, match=r"no module ghost \(needed by a\)"):
        resolve_modules(load_module_index(mdir), ["a"])


def test_dependency_cycle_is_permanent(tmp_path):
    mdir = tmp_path / "m" / "6.1"
    mdir.mkdir(parents=True)
    (mdir / "modules.dep").write_text("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(Permanent, match="cycle"):
        resolve_modules(load_module_index(mdir), ["a"])


def test_parse_modules_dep_and_builtin():
    table = parse_modules_dep("kernel/a/virtio-rng.ko.xz: kernel/b/virtio.ko kernel/c/virtio_ring.ko\n\n# c\n")
    assert table == {"virtio_rng": ("kernel/a/virtio-rng.ko.xz", ["virtio", "virtio_ring"])}
    with pytest.raises(Permanent, match="line 1"):
        parse_modules_dep("no separator here\n")
    assert parse_modules_builtin("kernel/fs/ext4/ext4.ko\nkernel/x/virtio-pci.ko\n") == {"ext4", "virtio_pci"}


def test_module_name():
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert module_name("virtio_net.ko.zst") == "virtio_net"
    assert module_name("vsock.ko") == "vsock"


def test_modinfo_rejects_non_elf_and_no_section():
    with pytest.raises(Permanent, match="not a 64-bit"):
        modinfo(b"hello" * 20)
    with pytest.raises(Permanent):
        modinfo(b"\x7fELF\x02\x01\x01" + b"\x00" * 100)


def test_missing_module_dir_and_file(tmp_path):
    with pytest.raises(NotFound):
        load_module_index(tmp_path / "nope")
    with pytest.raises(NotFound):
        module_bytes(tmp_path / "nope.ko")


def test_default_set_is_what_guest_init_loads():
    assert set(DEFAULT_GUEST_MODULES) >= {
        "virtio_mmio", "virtio_blk", "virtio_console", "virtio_net", "vsock", "vmw_vsock_virtio_transport",
    }  # fmt: skip


# Each module of Debian's cloud kernel that drives a virtio device, with its alias.
VIRTIO_ALIASES = {"virtio_blk": 0x2, "virtio_console": 0x3, "virtio_net": 0x1,
                  "vmw_vsock_virtio_transport": 0x13, "virtio_rng": 0x4, "virtiofs": 0x1A}


def _debian_like_modules(module_factory, names):
    deps = {module_name(p): d for p, d in DEBIAN_LIKE.items()} | {"virtiofs": ["fuse", "virtio", "virtio_ring"]}
    out = []
    for name in names:
        extra = b""
        if name in VIRTIO_ALIASES:
            extra = f"alias=virtio:d{VIRTIO_ALIASES[name]:08X}v*\x00".encode()
        if name == "virtiofs":
            extra += b"alias=fs-virtiofs\x00"
        out.append((name, module_factory(name, deps[name], extra=b"alias=other:x\x00" + extra)))
    return out


def test_load_conditions_follow_the_virtio_devices_each_module_serves(module_factory):
    names = [*EXPECTED_ORDER, "fuse", "virtiofs"]
    got = dict(zip(names, load_conditions(_debian_like_modules(module_factory, names))))
    assert got == {
        # the bus driver and what it uses: always
        "virtio_ring": None, "virtio": None, "virtio_mmio": None,
        "virtio_blk": {0x2}, "virtio_console": {0x3},
        # a driver's dependencies go with it
        "failover": {0x1}, "net_failover": {0x1}, "virtio_net": {0x1},
        "vsock": {0x13}, "vmw_vsock_virtio_transport_common": {0x13}, "vmw_vsock_virtio_transport": {0x13},
        "fuse": {0x1A}, "virtiofs": {0x1A},
    }  # fmt: skip


def test_a_module_something_unconditional_uses_is_unconditional(module_factory):
    mods = [("virtio_ring", module_factory("virtio_ring", [])),
            ("virtio_net", module_factory("virtio_net", ["virtio_ring"], extra=b"alias=virtio:d00000001v*\x00")),
            ("virtio_blk", module_factory("virtio_blk", ["virtio_ring"], extra=b"alias=virtio:d00000002v*\x00")),
            ("shared", module_factory("shared", [])),
            ("uses_net", module_factory("uses_net", ["virtio_net", "shared"]))]
    # uses_net drives nothing: always loaded, so virtio_net and shared are too
    assert load_conditions(mods) == [None, None, {0x2}, None, None]


def test_a_dependency_of_two_drivers_is_needed_for_both_devices(module_factory):
    mods = [("common", module_factory("common", [])),
            ("a", module_factory("a", ["common"], extra=b"alias=virtio:d00000001v*\x00")),
            ("b", module_factory("b", ["common"], extra=b"alias=virtio:d0000001Av*\x00"))]
    assert load_conditions(mods) == [{0x1, 0x1A}, {0x1}, {0x1A}]


def test_a_module_without_readable_modinfo_is_always_loaded(module_factory):
    mods = [("blob", b"not an ELF"), ("virtio_net", module_factory("virtio_net", ["blob"],
                                                                     extra=b"alias=virtio:d00000001v*\x00"))]
    assert load_conditions(mods) == [None, {0x1}]
