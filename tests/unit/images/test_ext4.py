"""ext4 builds from layers: metadata read back with debugfs, determinism, sizing."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from layer_factory import E, debugfs_stat, layer
from microagent.errors import ResourceExhausted
from microagent.images.ext4 import build_ext4
from microagent.images.layers import extract_layers
from microagent.images.model import Layer

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep


def fidelity_layers(blobs: Path) -> list[Layer]:
    l1 = layer(blobs, [
        E("bin/", "dir"),
        E("bin/busybox", data=b"\x7fELF...", mode=0o755),
        E("bin/sh", "symlink", link="busybox", mtime=1_600_000_000),
        E("usr/bin/passwd", data=b"pw", mode=0o4755, mtime=1_234_567_890),
        E("usr/bin/wall", data=b"w", mode=0o2755, gid=5),
        E("usr/bin/ping", data=b"p", mode=0o755, xattrs={"security.capability": CAP}),
        E("home/alice/", "dir", mode=0o700, uid=1000, gid=1000),
        E("home/alice/notes", data=b"n", mode=0o600, uid=1000, gid=1000, mtime=1_000_000_000.5),
        E("dev/", "dir"),
        E("dev/null", "char", mode=0o666, major=1, minor=3),
        E("dev/sda", "block", mode=0o660, gid=6, major=8, minor=0),
        E("dev/big", "char", mode=0o600, major=300, minor=70000),
        E("run/initctl", "fifo", mode=0o600, uid=0, gid=0),
        E("tmp/", "dir", mode=0o1777),
        E("opt/future", data=b"f", mtime=4_102_444_800),  # 2100: needs the extra epoch bits
        E("opt/past", data=b"p", mtime=-86_400),
        E("etc/big-ids", data=b"i", uid=200_000, gid=300_000),
        E("etc/lower", data=b"gone"),
        E("etc/dir with space/odd \"name\"", data=b"q", uid=7),
    ])
    l2 = layer(blobs, [E("etc/.wh.lower"), E("usr/bin/passwd2", "hardlink", link="usr/bin/passwd")], "gzip")
    l3 = layer(blobs, [E("dev/null-again", "hardlink", link="dev/null")], "zstd")
    return [l1, l2, l3]


def build(tmp: Path, layers: list[Layer], name: str = "out.ext4", key: str = "sha256:test",
          writer_min_bytes: int = 1 << 62) -> Path:
    root = tmp / f"stage-{name}"
    root.mkdir()
    ledger = extract_layers(layers, root, writer_min_bytes=writer_min_bytes)
    return build_ext4(root, tmp / name, key=key, ledger=ledger)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ext4")
    return build(tmp, fidelity_layers(tmp / "blobs"))


def test_image_is_clean_for_e2fsck(built: Path) -> None:
    proc = subprocess.run(["e2fsck", "-fn", str(built)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ownership_modes_and_setuid_are_exact(built: Path) -> None:
    pw = debugfs_stat(built, "/usr/bin/passwd")
    assert (pw["type"], pw["mode"], pw["uid"], pw["gid"], pw["links"]) == ("regular", 0o4755, 0, 0, 2)
    assert pw["mtime"] == (1_234_567_890, 0) and pw["ctime"] == (1_234_567_890, 0)
    assert debugfs_stat(built, "/usr/bin/wall")["mode"] == 0o2755
    assert debugfs_stat(built, "/tmp")["mode"] == 0o1777
    alice = debugfs_stat(built, "/home/alice")
    assert (alice["mode"], alice["uid"], alice["gid"]) == (0o700, 1000, 1000)
    notes = debugfs_stat(built, "/home/alice/notes")
    assert notes["uid"] == 1000 and notes["mtime"] == (1_000_000_000, 500_000_000 << 2)
    big = debugfs_stat(built, "/etc/big-ids")
    assert (big["uid"], big["gid"]) == (200_000, 300_000)
    assert debugfs_stat(built, '/etc/dir with space/odd "name"')["uid"] == 7


def test_device_nodes_and_fifos(built: Path) -> None:
    null = debugfs_stat(built, "/dev/null")
    assert (null["type"], null["mode"], null["dev"], null["links"]) == ("character special", 0o666, (1, 3), 2)
    assert null["mtime"] == (1_700_000_000, 0)
    assert debugfs_stat(built, "/dev/null-again")["dev"] == (1, 3)
    sda = debugfs_stat(built, "/dev/sda")
    assert (sda["type"], sda["mode"], sda["gid"], sda["dev"]) == ("block special", 0o660, 6, (8, 0))
    assert debugfs_stat(built, "/dev/big")["dev"] == (300, 70000)
    fifo = debugfs_stat(built, "/run/initctl")
    assert (fifo["type"], fifo["mode"]) == ("FIFO", 0o600)


def test_capability_xattr(built: Path) -> None:
    assert debugfs_stat(built, "/usr/bin/ping")["xattrs"] == {"security.capability": CAP}


def test_symlink_and_whiteout(built: Path) -> None:
    sh = debugfs_stat(built, "/bin/sh")
    assert sh["type"] == "symlink" and sh["mtime"] == (1_600_000_000, 0)
    out = subprocess.run(["debugfs", "-R", "ls /etc", str(built)], capture_output=True, text=True).stdout
    assert "big-ids" in out and "lower" not in out


def ext4_seconds(lo: int, extra: int) -> int:
    """Seconds of an ext4 timestamp: signed 32-bit low word plus the epoch bits of ``*_extra``."""
    return (lo - (1 << 32) if lo & 0x80000000 else lo) + ((extra & 3) << 32)


def test_times_outside_32_bits(built: Path) -> None:
    assert ext4_seconds(*debugfs_stat(built, "/opt/future")["mtime"]) == 4_102_444_800  # type: ignore[misc]
    assert ext4_seconds(*debugfs_stat(built, "/opt/past")["mtime"]) == -86_400  # type: ignore[misc]


def test_same_layers_give_byte_identical_images(tmp_path: Path) -> None:
    layers = fidelity_layers(tmp_path / "blobs")
    a = build(tmp_path, layers, "a.ext4")
    time.sleep(1.1)  # a later second: staging ctimes differ, the images must not
    b = build(tmp_path, layers, "b.ext4")
    assert a.read_bytes() == b.read_bytes()


def test_too_small_is_resource_exhausted(tmp_path: Path) -> None:
    import os

    lay = layer(tmp_path / "blobs", [E("big", data=os.urandom(3 << 20))])
    root = tmp_path / "stage"
    root.mkdir()
    ledger = extract_layers([lay], root)
    with pytest.raises(ResourceExhausted):
        build_ext4(root, tmp_path / "small.ext4", key="k", size_bytes=2 << 20, ledger=ledger)
    assert not (tmp_path / "small.ext4").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_writer_process_and_in_process_staging_give_byte_identical_images(tmp_path: Path) -> None:
    layers = fidelity_layers(tmp_path / "blobs")
    a = build(tmp_path, layers, "in-process.ext4")
    b = build(tmp_path, layers, "writer.ext4", writer_min_bytes=0)
    assert a.read_bytes() == b.read_bytes()


def test_every_staged_path_is_addressed_by_its_inode_number(tmp_path: Path) -> None:
    from microagent.images.metadata import inode_map

    root = tmp_path / "stage"
    root.mkdir()
    ledger = extract_layers(fidelity_layers(tmp_path / "blobs"), root)
    image = build_ext4(root, tmp_path / "img.ext4", key="k", ledger=ledger)
    found = inode_map(ledger, image, tmp_path)
    staged = [rel for rel, entry in ledger.items() if not entry.special]
    assert sorted(found) == sorted(staged)
    for rel in ("etc/dir with space/odd \"name\"", "usr/bin/passwd2", "home/alice/notes", "bin/sh"):
        quoted = '"/' + rel.replace('"', '""') + '"'
        out = subprocess.run(["debugfs", "-R", f"stat {quoted}", str(image)], capture_output=True, text=True).stdout
        assert out.startswith(f"Inode: {found[rel]} "), (rel, out[:40])


def test_a_failure_planning_the_metadata_pass_fails_the_build_cleanly(tmp_path: Path) -> None:
    """The debugfs script is planned in a thread while mke2fs runs: its error is the build's error."""
    from microagent.errors import Permanent
    from microagent.images.metadata import Entry

    root = tmp_path / "stage"
    root.mkdir()
    ledger = extract_layers([layer(tmp_path / "blobs", [E("etc/ok", data=b"1")])], root)
    ledger.put("etc/bad\nname", Entry("char", 0o600, major=1, minor=3))  # no debugfs line can address it
    out = tmp_path / "out" / "img.ext4"
    with pytest.raises(Permanent, match="newline"):
        build_ext4(root, out, key="k", ledger=ledger)
    assert list(out.parent.iterdir()) == []
