"""The metadata ledger and its debugfs script: quoting, device encoding, errors that name the path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layer_factory import debugfs_stat
from microagent.errors import Permanent
from microagent.images.ext4 import build_ext4
from microagent.images.metadata import Entry, Ledger, apply_ledger, encode_dev, quote

ODD_NAMES = ["sp ace", 'dq"uote', "sq'uote", "back\\slash", "tab\there", "#hash", "semi;colon", "dollar$x",
             "ümlaut", "non\udcffutf8", "-dash", "*star?", "'", '""']


def test_quote() -> None:
    assert quote("/a b") == b'"/a b"'
    assert quote('/a"b') == b'"/a""b"'
    assert quote("/non\udcff") == b'"/non\xff"'
    with pytest.raises(Permanent, match="newline"):
        quote("/a\nb")
    with pytest.raises(Permanent):
        quote("/a\rb")


def test_encode_dev_matches_the_kernel() -> None:
    assert encode_dev(1, 3) == (0x103, 0)
    assert encode_dev(8, 0) == (0x800, 0)
    major, minor = 300, 70000
    assert encode_dev(major, minor) == (0, (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12))


def test_ledger_tracks_children_and_hard_links() -> None:
    ledger = Ledger()
    ledger.put("a", Entry("dir", 0o755))
    ledger.put("a/b", Entry("dir", 0o700))
    f = Entry("file")
    ledger.put("a/b/f", f)
    ledger.put("a/g", f)
    assert ledger.children("a") == ["b", "g"]
    assert ledger.inodes() == [[""], ["a"], ["a/b"], ["a/b/f", "a/g"]]
    ledger.put("a/b", Entry("dir", 0o711))  # dir over dir keeps children
    assert "a/b/f" in ledger
    ledger.put("a/b", Entry("file"))  # anything else replaces the subtree
    assert "a/b/f" not in ledger and ledger.children("a/b") == []
    ledger.remove("a")
    assert ledger.paths() == [""]
    with pytest.raises(ValueError):
        ledger.put("missing/x", Entry("file"))


def _stage(tmp: Path, names: list[str]) -> tuple[Path, Ledger]:
    root = tmp / "stage"
    root.mkdir()
    ledger = Ledger()
    ledger.put("d", Entry("dir", 0o755))
    (root / "d").mkdir()
    for i, name in enumerate(names):
        (root / "d" / name).write_bytes(b"x")
        ledger.put(f"d/{name}", Entry("file", 0o640, uid=1000 + i, gid=2000 + i))
    return root, ledger


def test_odd_names_are_addressed_exactly(tmp_path: Path) -> None:
    root, ledger = _stage(tmp_path, ODD_NAMES)
    ledger.put("d/dev node \"x\"", Entry("char", 0o620, uid=5, major=4, minor=1))
    image = build_ext4(root, tmp_path / "img.ext4", key="k", ledger=ledger)
    for i, name in enumerate(ODD_NAMES):
        st = debugfs_stat(image, f"/d/{name}")
        assert (st["mode"], st["uid"], st["gid"]) == (0o640, 1000 + i, 2000 + i), name
    dev = debugfs_stat(image, '/d/dev node "x"')
    assert (dev["type"], dev["mode"], dev["uid"], dev["dev"]) == ("character special", 0o620, 5, (4, 1))


def test_xattrs_the_staging_fs_added_are_removed(tmp_path: Path) -> None:
    root, ledger = _stage(tmp_path, ["f"])
    try:
        os.setxattr(root / "d/f", "user.host-label", b"host")
    except OSError:
        pytest.skip("the temp filesystem does not take user xattrs")
    ledger.put("d/f", Entry("file", 0o644, xattrs={"user.image": b"\x00\x01binary"}))
    image = build_ext4(root, tmp_path / "img.ext4", key="k", ledger=ledger)
    assert debugfs_stat(image, "/d/f")["xattrs"] == {"user.image": b"\x00\x01binary"}


def test_a_failing_command_names_the_path(tmp_path: Path) -> None:
    root, ledger = _stage(tmp_path, ["f"])
    image = build_ext4(root, tmp_path / "img.ext4", key="k")
    ledger.put("d/not-staged", Entry("file", 0o600, uid=3))  # the image has no such file
    with pytest.raises(Permanent) as info:
        apply_ledger(ledger, root, image)
    assert "/d/not-staged" in info.value.message
    assert info.value.details["path"] == "/d/not-staged"


def test_build_failure_leaves_no_image(tmp_path: Path) -> None:
    root, ledger = _stage(tmp_path, ["f"])
    ledger.put("d/not-staged", Entry("file", 0o600, uid=3))
    with pytest.raises(Permanent):
        build_ext4(root, tmp_path / "img.ext4", key="k", ledger=ledger)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
