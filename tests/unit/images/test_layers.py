"""Layer extraction: formats, OCI whiteouts, links, and refusing entries that escape the root."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from layer_factory import E, blob_layer, layer, tar_bytes
from microagent.errors import Permanent
from microagent.images.layers import extract_layers, layer_kind, resolve_in_root


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    root.mkdir()
    return tmp_path / "blobs", root


@pytest.mark.parametrize("compression", ["tar", "gzip", "zstd"])
def test_each_compression_extracts(dirs: tuple[Path, Path], compression: str) -> None:
    blobs, root = dirs
    lay = layer(blobs, [E("etc/", "dir"), E("etc/hello", data=b"hi\n", mode=0o640, uid=7, gid=8)], compression)
    assert layer_kind(lay) == compression
    ledger = extract_layers([lay], root)
    assert (root / "etc/hello").read_bytes() == b"hi\n"
    entry = ledger.get("etc/hello")
    assert entry is not None and (entry.mode, entry.uid, entry.gid) == (0o640, 7, 8)
    assert os.stat(root / "etc/hello").st_mtime == 1_700_000_000


def test_compression_is_read_from_the_magic_not_the_media_type(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    plain = layer(blobs, [E("a", data=b"1")], "tar")
    mislabelled = blob_layer(blobs, plain.path.read_bytes(), "application/vnd.oci.image.layer.v1.tar+gzip")
    extract_layers([mislabelled], root)
    assert (root / "a").read_bytes() == b"1"


def test_unsupported_media_type_is_permanent(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    bad = blob_layer(blobs, tar_bytes([E("a")]), "application/vnd.example.layer.v1+squashfs")
    with pytest.raises(Permanent, match="unsupported layer media type"):
        extract_layers([bad], root)


@pytest.mark.parametrize("compression", ["tar", "gzip", "zstd"])
def test_truncated_layer_names_the_layer(dirs: tuple[Path, Path], compression: str) -> None:
    blobs, root = dirs
    good = layer(blobs, [E("big", data=os.urandom(200_000))], compression)
    cut = blob_layer(blobs, good.path.read_bytes()[: good.size // 2], good.media_type)
    with pytest.raises(Permanent) as info:
        extract_layers([cut], root)
    assert cut.digest in info.value.message and "truncated or corrupt" in info.value.message


def test_corrupt_gzip_names_the_layer(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    good = layer(blobs, [E("a", data=b"x" * 5000)], "gzip").path.read_bytes()
    bad = blob_layer(blobs, good[:20] + bytes(b ^ 0xFF for b in good[20:40]) + good[40:], "application/vnd.oci.image.layer.v1.tar+gzip")
    with pytest.raises(Permanent, match=bad.digest):
        extract_layers([bad], root)


def test_empty_blob_is_an_empty_layer(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    extract_layers([blob_layer(blobs, b"", "application/vnd.oci.image.layer.v1.tar")], root)
    assert list(root.iterdir()) == []


def test_links_devices_and_metadata(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    lay = layer(blobs, [
        E("bin/", "dir"),
        E("bin/busybox", data=b"bb", mode=0o755),
        E("bin/sh", "symlink", link="busybox"),
        E("bin/abs", "symlink", link="/etc/../../../outside"),
        E("bin/su", data=b"su", mode=0o4755),
        E("bin/su-again", "hardlink", link="bin/su"),
        E("bin/ping", data=b"p", mode=0o755, xattrs={"security.capability": cap}),
        E("dev/null", "char", mode=0o666, major=1, minor=3),
        E("dev/sda", "block", mode=0o660, major=8, minor=0, gid=6),
        E("run/ctl", "fifo", mode=0o600),
        E("dev/null2", "hardlink", link="dev/null"),
        E("tmp/", "dir", mode=0o1777),
    ])
    ledger = extract_layers([lay], root)
    assert os.readlink(root / "bin/abs") == "/etc/../../../outside"  # kept, never followed
    assert os.lstat(root / "bin/su").st_ino == os.lstat(root / "bin/su-again").st_ino
    assert ledger.get("bin/su") is ledger.get("bin/su-again")
    su = ledger.get("bin/su")
    assert su is not None and su.mode == 0o4755
    assert not os.lstat(root / "bin/su").st_mode & stat.S_ISUID, "staging never holds setuid bits"
    assert ledger.get("bin/ping").xattrs == {"security.capability": cap}  # type: ignore[union-attr]
    null = ledger.get("dev/null")
    assert null is not None and (null.kind, null.major, null.minor) == ("char", 1, 3)
    assert ledger.get("dev/null2") is null
    assert not (root / "dev/null").exists() and not (root / "run/ctl").exists()
    assert ledger.get("tmp").mode == 0o1777  # type: ignore[union-attr]
    implicit = ledger.get("dev")
    assert implicit is not None and (implicit.mode, implicit.uid, implicit.mtime_ns) == (0o755, 0, 0)


def test_whiteouts_and_opaque_dirs_across_three_layers(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    l1 = layer(blobs, [E("a/", "dir"), E("a/keep", data=b"1"), E("a/gone", data=b"1"),
                       E("b/", "dir"), E("b/old1", data=b"1"), E("b/sub/", "dir"), E("b/sub/old2", data=b"1"),
                       E("c/", "dir"), E("c/x", data=b"1"), E("d", data=b"file")])
    l2 = layer(blobs, [E("a/.wh.gone"), E("b/new", data=b"2"), E("b/.wh..wh..opq"),
                       E("b/sub/new2", data=b"2"), E(".wh.c"), E("a/.wh.never-existed")], "gzip")
    l3 = layer(blobs, [E("c/", "dir"), E("c/y", data=b"3"), E("a/.wh.keep"), E(".wh.d"),
                       E("d/", "dir"), E("d/inner", data=b"3")], "zstd")
    ledger = extract_layers([l1, l2, l3], root)
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert got == ["a", "b", "b/new", "b/sub", "b/sub/new2", "c", "c/y", "d", "d/inner"]
    assert sorted(ledger.paths()) == ["", *got]
    assert not any(".wh." in p for p in ledger.paths())


def test_replacing_entries(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    l1 = layer(blobs, [E("x/", "dir"), E("x/f", data=b"1"), E("y", data=b"file"), E("z/", "dir", mode=0o700)])
    l2 = layer(blobs, [E("x", data=b"now a file"), E("y/", "dir"), E("y/in", data=b"2"),
                       E("z/", "dir", mode=0o750, uid=5), E("y/in", data=b"dup wins")])
    ledger = extract_layers([l1, l2], root)
    assert (root / "x").read_bytes() == b"now a file"
    assert (root / "y/in").read_bytes() == b"dup wins"
    assert "x/f" not in ledger
    z = ledger.get("z")
    assert z is not None and (z.mode, z.uid) == (0o750, 5)


def test_leading_slash_and_dot_components_are_normalised(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    extract_layers([layer(blobs, [E("/abs/file", data=b"1"), E("./rel/./file", data=b"2"), E("./", "dir", mode=0o700)])], root)
    assert (root / "abs/file").read_bytes() == b"1" and (root / "rel/file").read_bytes() == b"2"


@pytest.mark.parametrize("entries, why", [
    ([E("../escape", data=b"x")], "'..'"),
    ([E("a/../../escape", data=b"x")], "'..'"),
    ([E("evil", "symlink", link="/"), E("evil/etc/passwd", data=b"x")], "symlink 'evil'"),
    ([E("evil", "symlink", link=".."), E("evil/x", data=b"x")], "symlink 'evil'"),
    ([E("link", "hardlink", link="../../etc/passwd")], "'..'"),
    ([E("link", "hardlink", link="/etc/passwd")], "not in the image"),
    ([E("d/", "dir"), E("link", "hardlink", link="d")], "is a directory"),
    ([E("f", data=b"1"), E("f/child", data=b"x")], "'f' is not a directory"),
    ([E("new\nline", data=b"x")], "newline"),
    ([E("x" * 256, data=b"x")], "longer than 255"),
    ([E("/".join(["d" * 200] * 21), data=b"x")], "longer than 4000"),
])
def test_escaping_entries_are_refused(dirs: tuple[Path, Path], entries: list[E], why: str) -> None:
    blobs, root = dirs
    lay = layer(blobs, entries)
    with pytest.raises(Permanent) as info:
        extract_layers([lay], root)
    assert why in info.value.message and lay.digest in info.value.message
    assert info.value.details["entry"] == entries[-1].name


def test_symlink_planted_by_an_earlier_layer_is_not_followed(tmp_path: Path) -> None:
    blobs, root = tmp_path / "blobs", tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    l1 = layer(blobs, [E("etc", "symlink", link=str(outside))])
    l2 = layer(blobs, [E("etc/passwd", data=b"pwned")], "gzip")
    with pytest.raises(Permanent, match="symlink 'etc'"):
        extract_layers([l1, l2], root)
    assert list(outside.iterdir()) == []


def test_whiteout_through_a_symlink_is_refused(tmp_path: Path) -> None:
    blobs, root = tmp_path / "blobs", tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    l1 = layer(blobs, [E("d", "symlink", link=str(outside))])
    l2 = layer(blobs, [E("d/.wh.precious")])
    with pytest.raises(Permanent, match="symlink 'd'"):
        extract_layers([l1, l2], root)
    assert (outside / "precious").read_text() == "keep"


def test_resolve_in_root_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "sbin").symlink_to("usr/sbin")
    (root / "abs").symlink_to("/usr/sbin")
    (root / "up").symlink_to("../../../../usr")
    (root / "loop").symlink_to("loop")
    assert resolve_in_root(root, "sbin") == "usr/sbin"
    assert resolve_in_root(root, "abs") == "usr/sbin"
    assert resolve_in_root(root, "up/sbin") == "usr/sbin"
    assert resolve_in_root(root, "loop") is None
    assert resolve_in_root(root, "missing/x") is None


# -- the same path again, pipelined inflating ---------------------------------------------------


def test_a_path_seen_again_sees_the_pending_file(dirs: tuple[Path, Path]) -> None:
    """The second entry of a path replaces the first, whatever the kinds."""
    blobs, root = dirs
    lay = layer(blobs, [E("a", data=b"first"), E("a", data=b"second", mode=0o600),
                        E("l", "symlink", link="a"), E("l", data=b"not a link")], "gzip")
    ledger = extract_layers([lay], root)
    assert (root / "a").read_bytes() == b"second"
    assert not (root / "l").is_symlink() and (root / "l").read_bytes() == b"not a link"
    entry = ledger.get("a")
    assert entry is not None and entry.mode == 0o600


def test_a_queued_file_is_not_a_directory(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    lay = layer(blobs, [E("f", data=b"x"), E("f/child", data=b"y")], "gzip")
    with pytest.raises(Permanent, match="'f' is not a directory"):
        extract_layers([lay], root)


def test_hard_links_and_whiteouts_see_queued_files(dirs: tuple[Path, Path]) -> None:
    blobs, root = dirs
    lay = layer(blobs, [E("d/", "dir"), E("d/f", data=b"x"), E("d/g", "hardlink", link="d/f"),
                        E("d/h", data=b"h")], "gzip")
    upper = layer(blobs, [E("d/.wh.h"), E("d/.wh..wh..opq"), E("d/new", data=b"n")], "gzip")
    extract_layers([lay, upper], root)
    assert sorted(os.listdir(root / "d")) == ["new"]


def test_no_thread_outlives_a_build(dirs: tuple[Path, Path]) -> None:
    """The inflating thread stops on success and on a corrupt layer."""
    import threading

    blobs, root = dirs
    before = threading.active_count()
    good = layer(blobs, [E(f"f{i}", data=b"x" * i) for i in range(50)], "gzip")
    extract_layers([good], root)
    corrupt = blob_layer(blobs, good.path.read_bytes()[:200] + b"\x00" * 64,
                         "application/vnd.oci.image.layer.v1.tar+gzip")
    root2 = root.parent / "root2"
    root2.mkdir()
    with pytest.raises(Permanent, match="truncated or corrupt"):
        extract_layers([corrupt], root2)
    assert threading.active_count() == before
