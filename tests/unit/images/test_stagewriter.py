"""The staging writer process: large layers' new files, written on another core with the same rules."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from layer_factory import E, compress, layer, tar_bytes, blob_layer, MEDIA
from microagent.errors import Permanent
from microagent.images.layers import extract_layers
from microagent.images.metadata import Ledger
from microagent.images.stagewriter import StageWriter, WriteFailed

ALWAYS, NEVER = 0, 1 << 62


def scenario(blobs: Path) -> list:
    l1 = layer(blobs, [E("a/", "dir"), E("a/keep", data=b"1"), E("a/gone", data=b"1"),
                       E("b/", "dir"), E("b/old1", data=b"1"), E("b/sub/", "dir"), E("b/sub/old2", data=b"1"),
                       E("c/x", data=b"1"), E("d", data=b"file"), E("bin/su", data=b"su", mode=0o4755),
                       E("bin/su-again", "hardlink", link="bin/su"), E("bin/sh", "symlink", link="su"),
                       E("dev/null", "char", mode=0o666, major=1, minor=3), E("etc/shadow", data=b"s", mode=0o000),
                       E("big", data=os.urandom(3 << 20), mode=0o755), E("dup", data=b"first")])
    l2 = layer(blobs, [E("a/.wh.gone"), E("b/new", data=b"2"), E("b/.wh..wh..opq"), E("b/sub/new2", data=b"2"),
                       E(".wh.c"), E("x", data=b"now a file"), E("d/", "dir"), E("d/in", data=b"2"),
                       E("dup", data=b"second wins"), E("a/keep2", "hardlink", link="a/keep")], "gzip")
    return [l1, l2]


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every staged path: its type and owner bits (group/other bits depend on the umask in-process), its content."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st_ = os.lstat(p)
            data = p.read_bytes() if stat.S_ISREG(st_.st_mode) else os.readlink(p).encode() if p.is_symlink() else b""
            out[str(p.relative_to(root))] = (stat.S_IFMT(st_.st_mode) | (st_.st_mode & 0o700), data)
    return out


def ledger_view(ledger: Ledger) -> list[tuple[str, str, int, int, int]]:
    return [(rel, e.kind, e.mode, e.uid, e.mtime_ns) for rel, e in ledger.items()]


def test_writer_process_stages_the_same_tree_and_ledger(tmp_path: Path) -> None:
    lays = scenario(tmp_path / "blobs")
    trees = {}
    for label, threshold in (("writer", ALWAYS), ("in-process", NEVER)):
        root = tmp_path / label
        root.mkdir()
        ledger = extract_layers(lays, root, writer_min_bytes=threshold)
        trees[label] = (snapshot(root), ledger_view(ledger))
    assert trees["writer"] == trees["in-process"]
    root = tmp_path / "writer"
    assert (root / "dup").read_bytes() == b"second wins"
    assert os.lstat(root / "a/keep").st_ino == os.lstat(root / "a/keep2").st_ino
    # staged modes: the entry's permission bits plus owner rw, never setuid; directories 0700
    assert stat.S_IMODE(os.lstat(root / "bin/su").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(root / "etc/shadow").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(root / "a").st_mode) == 0o700


def test_writer_refuses_an_existing_name_and_names_the_entry(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    writer = StageWriter(fd)
    try:
        writer.file("", "a", 0o644, 5, lambda out: os.write(out, b"first"))
        writer.sync()
        writer.file("d", "b", 0o644, 1, lambda out: os.write(out, b"b"))
        writer.file("", "a", 0o644, 6, lambda out: os.write(out, b"second"))
        with pytest.raises(WriteFailed) as info:
            writer.sync()
    finally:
        writer.close()
        os.close(fd)
    assert info.value.label == "a" and info.value.error.errno == 17  # EEXIST
    assert (tmp_path / "a").read_bytes() == b"first" and (tmp_path / "d/b").read_bytes() == b"b"


def test_writer_never_follows_a_symlinked_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real/link").symlink_to(outside)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    writer = StageWriter(fd)
    try:
        writer.file("real/link", "x", 0o644, 1, lambda out: os.write(out, b"x"))
        with pytest.raises(WriteFailed) as info:
            writer.sync()
        writer.file("real/..", "y", 0o644, 1, lambda out: os.write(out, b"y"))
    except WriteFailed:
        pass  # the child has already exited after the first error
    finally:
        writer.close()
        os.close(fd)
    assert info.value.label == "real/link/x"
    assert list(outside.iterdir()) == [] and not (tmp_path / "y").exists()


def _children() -> set[int]:
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        out.update(int(pid) for pid in (task / "children").read_text().split())
    return out


def test_truncated_layer_with_the_writer_is_permanent_and_leaves_no_process(tmp_path: Path) -> None:
    raw = tar_bytes([E("d/", "dir"), E("d/a", data=b"a" * 4096), E("d/big", data=os.urandom(1 << 20))])
    cut = blob_layer(tmp_path / "blobs", compress(raw[: len(raw) // 2], "gzip"), MEDIA["gzip"])
    root = tmp_path / "root"
    root.mkdir()
    before = _children()
    with pytest.raises(Permanent, match="truncated or corrupt"):
        extract_layers([cut], root, writer_min_bytes=ALWAYS)
    assert _children() <= before


@pytest.mark.parametrize("threshold", [ALWAYS, NEVER], ids=["writer", "in-process"])
def test_a_file_the_ledger_does_not_know_is_refused_not_overwritten(tmp_path: Path, threshold: int) -> None:
    """New paths are created with O_EXCL without looking first: whatever is there already fails closed."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "passwd").write_text("not from the image")
    lay = layer(tmp_path / "blobs", [E("bin/", "dir"), E("passwd", data=b"root:x:0:0::/:/bin/sh\n")], "gzip")
    with pytest.raises(Permanent) as info:
        extract_layers([lay], root, writer_min_bytes=threshold)
    assert "'passwd' refused: File exists" in info.value.message and lay.digest in info.value.message
    assert (root / "passwd").read_text() == "not from the image"
