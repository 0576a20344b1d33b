"""The cpio newc writer and the initramfs layout, read back by GNU cpio and by a small reader here."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microagent.errors import NotFound, Permanent
from microagent.kernels.initramfs import CpioEntry, build_initramfs, initramfs_entries, write_cpio

CPIO = shutil.which("cpio")
needs_cpio = pytest.mark.skipif(CPIO is None, reason="GNU cpio is not installed (apt-get install cpio)")


@dataclass
class ReadEntry:
    name: str
    ino: int
    mode: int
    nlink: int
    mtime: int
    data: bytes
    rdev: tuple[int, int]


def read_newc(blob: bytes) -> list[ReadEntry]:
    """An independent newc reader that also checks the 4-byte alignment rules."""
    out = []
    pos = 0
    while True:
        assert pos % 4 == 0, f"header at unaligned offset {pos}"
        head = blob[pos : pos + 110]
        assert head[:6] == b"070701", f"bad magic at {pos}: {head[:6]!r}"
        f = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        ino, mode, _uid, _gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, check = f
        assert check == 0
        name_start = pos + 110
        name = blob[name_start : name_start + namesize]
        assert name.endswith(b"\x00")
        data_start = name_start + namesize
        data_start += -data_start % 4
        assert blob[name_start + namesize : data_start] == b"\x00" * (data_start - name_start - namesize)
        data = blob[data_start : data_start + size]
        pos = data_start + size
        assert blob[pos : pos + (-pos % 4)] == b"\x00" * (-pos % 4)
        pos += -pos % 4
        decoded = name[:-1].decode("utf-8", "surrogateescape")
        if decoded == "TRAILER!!!":
            assert pos == len(blob), "bytes after the trailer"
            return out
        out.append(ReadEntry(decoded, ino, mode, nlink, mtime, data, (rmaj, rmin)))


def _write(entries) -> bytes:
    buf = io.BytesIO()
    n = write_cpio(entries, buf)
    blob = buf.getvalue()
    assert n == len(blob)
    return blob


@pytest.fixture
def init_and_modules(tmp_path):
    init = tmp_path / "microagent-init"
    init.write_bytes(b"\x7fELF fake init " * 50)
    mods = []
    for i, name in enumerate(["virtio_ring", "virtio", "virtio-mmio"]):
        p = tmp_path / f"{i:02d}-{name}.ko" if i else tmp_path / f"{name}.ko"
        p.write_bytes(f"module {name}".encode() * (i + 1) + b"\x00" * i)
        mods.append(p)
    return init, mods


EXPECTED_NAMES = [
    "dev", "dev/console", "init", "microagent-initramfs", "modules",
    "modules/00-virtio_ring.ko", "modules/01-virtio.ko", "modules/02-virtio_mmio.ko",
    "newroot", "proc", "sys",
]  # fmt: skip


def test_layout(tmp_path, init_and_modules):
    init, mods = init_and_modules
    out = build_initramfs(init, mods, tmp_path / "out" / "initramfs.cpio")
    entries = {e.name: e for e in read_newc(out.read_bytes())}
    assert sorted(entries) == EXPECTED_NAMES
    assert entries["init"].data == init.read_bytes()
    assert stat.S_ISREG(entries["init"].mode) and stat.S_IMODE(entries["init"].mode) == 0o755
    assert entries["microagent-initramfs"].data == b""
    console = entries["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)
    for d in ("dev", "proc", "sys", "newroot", "modules"):
        assert stat.S_ISDIR(entries[d].mode) and entries[d].nlink == 2
    assert entries["modules/02-virtio_mmio.ko"].data == mods[2].read_bytes()
    assert [e.ino for e in read_newc(out.read_bytes())] == list(range(1, len(EXPECTED_NAMES) + 1))
    assert {e.mtime for e in entries.values()} == {0}


def test_deterministic_and_order_independent(tmp_path, init_and_modules):
    init, mods = init_and_modules
    a = build_initramfs(init, mods, tmp_path / "a.cpio").read_bytes()
    b = build_initramfs(init, mods, tmp_path / "b.cpio").read_bytes()
    assert a == b
    entries = initramfs_entries(b"x", [("m", b"y")])
    assert _write(entries) == _write(list(reversed(entries)))


@needs_cpio
def test_gnu_cpio_lists_and_extracts(tmp_path, init_and_modules):
    init, mods = init_and_modules
    out = build_initramfs(init, mods, tmp_path / "initramfs.cpio")
    listing = subprocess.run([CPIO, "-t", "--quiet"], stdin=out.open("rb"), capture_output=True, check=True)
    assert listing.stdout.decode().split("\n")[:-1] == EXPECTED_NAMES
    verbose = subprocess.run([CPIO, "-tv", "--quiet"], stdin=out.open("rb"), capture_output=True, check=True)
    console_line = next(ln for ln in verbose.stdout.decode().splitlines() if ln.endswith("dev/console"))
    assert console_line.startswith("crw-------") and "5,   1" in console_line
    dest = tmp_path / "x"
    dest.mkdir()
    # device nodes need root to mknod; everything else must extract as anyone
    subprocess.run([CPIO, "-i", "-d", "--quiet", "--no-absolute-filenames", "-f", "dev/console"],
                   stdin=out.open("rb"), cwd=dest, check=True)  # fmt: skip
    assert (dest / "init").read_bytes() == init.read_bytes()
    assert os.access(dest / "init", os.X_OK)
    assert (dest / "microagent-initramfs").read_bytes() == b""
    assert sorted(p.name for p in (dest / "modules").iterdir()) == [n.split("/")[1] for n in EXPECTED_NAMES[5:8]]
    for i, src in enumerate(mods):
        assert (dest / "modules").glob(f"{i:02d}-*.ko").__next__().read_bytes() == src.read_bytes()
    for d in ("proc", "sys", "newroot", "dev"):
        assert (dest / d).is_dir()


def test_symlink_and_block_device_entries():
    blob = _write([CpioEntry.symlink("bin/sh", "busybox"), CpioEntry.directory("bin"),
                   CpioEntry.block_device("dev/vda", 254, 0), CpioEntry.directory("dev")])  # fmt: skip
    got = {e.name: e for e in read_newc(blob)}
    assert [e.name for e in read_newc(blob)] == ["bin", "bin/sh", "dev", "dev/vda"]
    assert stat.S_ISLNK(got["bin/sh"].mode) and got["bin/sh"].data == b"busybox"
    assert stat.S_ISBLK(got["dev/vda"].mode) and got["dev/vda"].rdev == (254, 0)


def test_directory_precedes_its_contents_even_with_sorting_traps():
    # byte order puts "a-b" before "a/..." but "a" must still precede "a/b"
    blob = _write([CpioEntry.file("a/b", b"1"), CpioEntry.directory("a-b"), CpioEntry.directory("a")])
    assert [e.name for e in read_newc(blob)] == ["a", "a/b", "a-b"]


@pytest.mark.parametrize("bad", ["", "/", "a/../b", "./x", "a\x00b", "TRAILER!!!"])
def test_invalid_paths_rejected(bad):
    with pytest.raises(Permanent):
        _write([CpioEntry(bad, stat.S_IFREG | 0o644, b"")])


def test_duplicate_paths_rejected():
    with pytest.raises(Permanent, match="twice"):
        _write([CpioEntry.file("a", b"1"), CpioEntry.file("/a", b"2")])


def test_missing_inputs_are_not_found_and_leave_no_output(tmp_path, init_and_modules):
    init, mods = init_and_modules
    with pytest.raises(NotFound, match="guest init"):
        build_initramfs(tmp_path / "nope", mods, tmp_path / "o.cpio")
    with pytest.raises(NotFound, match="kernel module"):
        build_initramfs(init, [tmp_path / "gone.ko"], tmp_path / "o.cpio")
    assert not (tmp_path / "o.cpio").exists()
    assert not list(tmp_path.glob(".o.cpio*"))


def test_atomic_replace_keeps_old_file_until_done(tmp_path, init_and_modules):
    init, mods = init_and_modules
    out = tmp_path / "i.cpio"
    out.write_bytes(b"old")
    build_initramfs(init, mods, out)
    assert out.read_bytes().startswith(b"070701")
    assert not list(tmp_path.glob(".i.cpio*"))


# --- property tests -------------------------------------------------------

_component = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
_path = st.lists(_component, min_size=1, max_size=4).map("/".join).filter(lambda p: p != "TRAILER!!!")
_entry = st.one_of(
    st.builds(lambda p, d, m: CpioEntry.file(p, d, m), _path, st.binary(max_size=300), st.integers(0, 0o7777)),
    st.builds(lambda p: CpioEntry.directory(p), _path),
    st.builds(lambda p, t: CpioEntry.symlink(p, t), _path, st.text(min_size=1, max_size=40).filter(
        lambda t: "\x00" not in t and all(not 0xD800 <= ord(c) <= 0xDFFF for c in t))),
    st.builds(lambda p, a, b: CpioEntry.char_device(p, a, b), _path, st.integers(0, 4095), st.integers(0, 2**20)),
)
_entries = st.lists(_entry, max_size=20, unique_by=lambda e: e.path)


@given(_entries)
@settings(max_examples=200, deadline=None)
def test_roundtrip_through_python_reader(entries):
    blob = _write(entries)
    assert len(blob) % 4 == 0
    got = read_newc(blob)
    want = sorted(entries, key=lambda e: [c.encode() for c in e.path.split("/")])
    assert [g.name for g in got] == [w.path for w in want]
    assert [g.ino for g in got] == list(range(1, len(want) + 1))
    for g, w in zip(got, want):
        assert g.mode == w.mode
        assert g.data == (w.data if stat.S_ISREG(w.mode) or stat.S_ISLNK(w.mode) else b"")
        assert g.rdev == (w.rdev_major, w.rdev_minor)
    assert _write(list(reversed(entries))) == blob


_safe_component = st.text(alphabet="abcXYZ019_-.+ ", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
_safe_files = st.lists(
    st.tuples(st.lists(_safe_component, min_size=1, max_size=3).map("/".join), st.binary(max_size=200)),
    max_size=10,
    unique_by=lambda t: t[0],
).filter(lambda fs: not any(q.startswith(p + "/") for p, _ in fs for q, _ in fs))


@needs_cpio
@given(_safe_files)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_gnu_cpio_reads_arbitrary_archives(tmp_path_factory, files):
    blob = _write([CpioEntry.file(p, d) for p, d in files])
    listed = subprocess.run([CPIO, "-t", "--quiet"], input=blob, capture_output=True, check=True).stdout
    assert sorted(listed.decode().split("\n")[:-1]) == sorted(p for p, _ in files)
    if not files:
        return
    dest = tmp_path_factory.mktemp("x")
    subprocess.run([CPIO, "-i", "-d", "--quiet"], input=blob, cwd=dest, check=True)
    for p, d in files:
        assert (dest / p).read_bytes() == d


def test_modules_for_some_virtio_devices_are_listed_in_conditions(module_factory):
    net = module_factory("virtio_net", ["failover"], extra=b"alias=virtio:d00000001v*\x00")
    fs = module_factory("virtiofs", [], extra=b"alias=virtio:d0000001Av*\x00alias=fs-virtiofs\x00")
    modules = [("virtio_mmio", module_factory("virtio_mmio", [])), ("failover", module_factory("failover", [])),
               ("virtio_net", net), ("virtiofs", fs)]
    entries = {e.name: e for e in read_newc(_write(initramfs_entries(b"init", modules)))}
    # guest init (boot.c) reads "FILE ID..." lines; FILE without a line loads always
    assert entries["modules/conditions"].data == (b"01-failover.ko 0x0001\n02-virtio_net.ko 0x0001\n"
                                                  b"03-virtiofs.ko 0x001a\n")


def test_no_conditions_file_when_every_module_loads_always(init_and_modules):
    _init, mods = init_and_modules  # not ELF: no .modinfo to read
    entries = initramfs_entries(b"init", [(m.stem, m.read_bytes()) for m in mods])
    assert "modules/conditions" not in {e.path for e in entries}
