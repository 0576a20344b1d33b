"""Committing crafted ext4 disks (no VM): the diff layer, whiteouts, reproducible digests,
hostile disks that must not reach the host, and the OCI-layout and registry destinations."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from microagent.errors import InvalidRequest, Permanent, PolicyDenied
from microagent.images.blobs import BlobStore
from microagent.images.commit import Base, check_destination, commit_disk, push, record_in_cache, write_layout
from microagent.images.model import ImageConfig, Platform
from microagent.images.pull import pull
from microagent.images.reference import LayoutReference, parse_image_reference
from commit.disks import debugfs_write, make_disk
from support_registry import AUTH_USER

AMD64 = Platform("amd64")
BASE_CONFIG = {"architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"], "Cmd": ["sh"], "User": "0"},
               "rootfs": {"type": "layers", "diff_ids": []}, "history": []}


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _layer(state: Path, digest: str) -> tarfile.TarFile:
    data = (state / "images" / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)), encoding="utf-8", errors="surrogateescape")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A base disk and a workspace disk copied from it, then changed as a guest would."""
    tree = _tree(tmp_path / "tree", {"etc/os-release": "ID=test\n", "etc/keep": "old\n", "etc/hosts": "h\n",
                                     "bin/tool": "#!/bin/sh\n", "usr/share/doc/a": "doc\n",
                                     "sbin/microagent-init": "init\n", "root/.keep": ""})
    base = make_disk(tree, tmp_path / "base.ext4")
    ws = tmp_path / "ws.ext4"
    shutil.copyfile(base, ws)
    (tmp_path / "new.txt").write_text("made in the guest\n")
    (tmp_path / "keep.txt").write_text("new\n")
    out = debugfs_write(ws, f"write {tmp_path}/new.txt /root/new.txt", "rm /etc/os-release",
                        "rm /usr/share/doc/a", "rmdir /usr/share/doc", "mkdir /opt",
                        "rm /etc/keep", f"write {tmp_path}/keep.txt /etc/keep",
                        "rm /etc/hosts", f"write {tmp_path}/keep.txt /etc/hosts",
                        "mkdir /proc", "mkdir /proc/self", "mknod sock p")
    assert "rror" not in out, out
    return base, ws


def test_diff_layer_has_changes_and_whiteouts_only(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, ws = pair
    state = tmp_path / "state"
    built = commit_disk(ws, Base(disk=base, config_json=BASE_CONFIG), state, platform=AMD64)
    with _layer(state, built.layer_digest) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"etc/.wh.os-release", "etc/keep", "opt", "root/new.txt", "usr/share/.wh.doc",
                                "proc", "sock"}
        assert tar.extractfile(members["root/new.txt"]).read() == b"made in the guest\n"  # type: ignore[union-attr]
        assert tar.extractfile(members["etc/keep"]).read() == b"new\n"  # type: ignore[union-attr]
        assert members["sock"].isfifo()  # a FIFO the guest made travels as a FIFO
        assert all(m.uname == "" and m.gname == "" for m in members.values())
    assert built.changes == {"added": 4, "changed": 1, "deleted": 2}
    config = json.loads(built.config)
    assert config["config"] == BASE_CONFIG["config"]  # env, cmd, user of the base
    assert config["rootfs"]["diff_ids"] == [built.diff_id]
    assert config["history"][-1]["created_by"] == "microagent commit"
    manifest = json.loads(built.manifest)
    assert [l["digest"] for l in manifest["layers"]] == [built.layer_digest]


def test_same_disk_gives_the_same_digest(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, ws = pair
    first = commit_disk(ws, Base(disk=base, config_json=BASE_CONFIG), tmp_path / "s1", platform=AMD64)
    again = commit_disk(ws, Base(disk=base, config_json=BASE_CONFIG), tmp_path / "s1", platform=AMD64)
    elsewhere = commit_disk(ws, Base(disk=base, config_json=BASE_CONFIG), tmp_path / "s2", platform=AMD64)
    assert first.digest == again.digest == elsewhere.digest
    assert first.layer_digest == elsewhere.layer_digest
    debugfs_write(ws, "mkdir /another", when=1900000000)
    changed = commit_disk(ws, Base(disk=base, config_json=BASE_CONFIG), tmp_path / "s1", platform=AMD64)
    assert changed.digest != first.digest


def test_full_layer_without_a_base_leaves_out_boot_and_runtime_files(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    _, ws = pair
    state = tmp_path / "state"
    built = commit_disk(ws, Base(), state, platform=AMD64,
                        fallback_config=ImageConfig(env=("PATH=/bin",), working_dir="/root", user="0:0"))
    with _layer(state, built.layer_digest) as tar:
        names = set(tar.getnames())
    assert {"etc/keep", "root/new.txt", "bin/tool", "proc"} <= names
    assert not names & {"etc/hosts", "sbin/microagent-init", "lost+found", "proc/self"}
    assert not any(".wh." in n for n in names)
    cfg = json.loads(built.config)["config"]
    assert cfg == {"Env": ["PATH=/bin"], "WorkingDir": "/root", "User": "0:0"}


def test_hostile_entries_are_carried_as_data_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "sentinel"
    sentinel.write_text("untouched\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    os.symlink("/etc/passwd", tree / "passwd")
    os.symlink(str(sentinel), tree / "escape")
    os.symlink(str(outside), tree / "outdir")
    os.mkfifo(tree / "fifo")
    weird = [b"\xff\xfe not utf-8", b"-rf", b"...", b"a b; $(touch pwned)", b"n" * 255]
    for name in weird:
        (tree / os.fsdecode(name)).write_bytes(b"w")
    disk = make_disk(tree, tmp_path / "hostile.ext4")
    debugfs_write(disk, "mknod mem c 1 1")
    state = tmp_path / "state"
    built = commit_disk(disk, Base(), state, platform=AMD64)
    with _layer(state, built.layer_digest) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["passwd"].issym() and members["passwd"].linkname == "/etc/passwd"
    assert members["escape"].issym() and members["escape"].linkname == str(sentinel)
    assert members["fifo"].isfifo()
    assert members["mem"].ischr() and (members["mem"].devmajor, members["mem"].devminor) == (1, 1)
    for name in weird:
        assert os.fsdecode(name) in members
    assert sentinel.read_text() == "untouched\n" and sorted(os.listdir(outside)) == ["sentinel"]
    assert not list(tmp_path.rglob("pwned"))
    assert list((state / "images" / "tmp").iterdir()) == []  # the private staging is gone


@pytest.mark.parametrize("name", ["../../../escaped", "a/../../escaped"])
def test_a_name_with_slashes_is_refused_and_writes_nothing(tmp_path: Path, name: str) -> None:
    disk = make_disk(_tree(tmp_path / "tree", {"d/f": "x"}), tmp_path / "evil.ext4")
    debugfs_write(disk, "cd /d", f'mknod "{name}" p', "cd /", f'write /etc/hostname "{name}"')
    state = tmp_path / "state"
    with pytest.raises(Permanent, match="contains '/'"):
        commit_disk(disk, Base(), state, platform=AMD64)
    assert not [p for p in tmp_path.parent.rglob("escaped")]
    assert list((state / "images" / "tmp").iterdir()) == []


def test_an_absurd_file_size_is_refused_before_reading(tmp_path: Path) -> None:
    disk = make_disk(_tree(tmp_path / "tree", {"big": "x"}), tmp_path / "big.ext4")
    debugfs_write(disk, "sif /big size 0x40000000000")  # 4 TiB claimed by the inode
    with pytest.raises(Permanent, match="exceeds the limit"):
        commit_disk(disk, Base(), tmp_path / "state", platform=AMD64)
    assert list((tmp_path / "state" / "images" / "tmp").iterdir()) == []


def test_a_whiteout_name_on_the_disk_is_refused(tmp_path: Path) -> None:
    disk = make_disk(_tree(tmp_path / "tree", {"etc/.wh.passwd": "x"}), tmp_path / "wh.ext4")
    with pytest.raises(Permanent, match="whiteouts"):
        commit_disk(disk, Base(), tmp_path / "state", platform=AMD64)


def test_destinations_are_checked_before_any_work() -> None:
    for bad in ("builtin:busybox", "docker-archive:/tmp/x.tar", "img@sha256:" + "a" * 64, "Bad Name"):
        with pytest.raises(InvalidRequest):
            check_destination(bad, push=False)
    with pytest.raises(InvalidRequest, match="--push"):
        check_destination("oci:/tmp/layout:v1", push=True)


def test_oci_layout_and_cache_record_are_pulled_back(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    _, ws = pair
    state = tmp_path / "state"
    built = commit_disk(ws, Base(), state, platform=AMD64)
    layout = tmp_path / "layout"
    write_layout(LayoutReference(layout, "v1"), built, state)
    write_layout(LayoutReference(layout, "v1"), built, state)  # the same tag is replaced, not repeated
    assert len(json.loads((layout / "index.json").read_text())["manifests"]) == 1
    assert oct((layout / "index.json").stat().st_mode & 0o777) == "0o600"
    other = tmp_path / "other-state"
    pulled = pull(f"oci:{layout}:v1", other, architecture="x86_64")
    assert pulled.digest == built.digest
    record_in_cache(state, parse_image_reference("local/committed:v1"), built)
    cached = pull("local/committed:v1", state, architecture="x86_64", policy="never")
    assert cached.digest == built.digest and cached.source == "commit"


def test_push_to_a_real_registry(tmp_path: Path, pair: tuple[Path, Path], registry: object) -> None:
    _, ws = pair
    state = tmp_path / "state"
    built = commit_disk(ws, Base(), state, platform=AMD64)
    ref = parse_image_reference(f"{registry.host}/commit/test:v1")  # type: ignore[attr-defined]
    assert push(ref, built, state) == 2  # the layer and the config
    assert push(ref, built, state) == 0  # the registry has both now
    pulled = pull(str(ref), tmp_path / "fresh", architecture="x86_64", policy="always")
    assert pulled.digest == built.digest
    assert BlobStore.for_state(tmp_path / "fresh").has(built.layer_digest)


def test_push_uses_the_registry_credentials(tmp_path: Path, pair: tuple[Path, Path], auth_registry: object,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, ws = pair
    state = tmp_path / "state"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    built = commit_disk(ws, Base(), state, platform=AMD64)
    ref = parse_image_reference(f"{auth_registry.host}/commit/auth:v1")  # type: ignore[attr-defined]
    with pytest.raises(PolicyDenied):
        push(ref, built, state)
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {auth_registry.host: {  # type: ignore[attr-defined]
        "username": AUTH_USER[0], "password": AUTH_USER[1]}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    assert push(ref, built, state) == 2
    assert pull(str(ref), tmp_path / "fresh", architecture="x86_64").digest == built.digest


def test_a_state_directory_with_spaces_and_quotes(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, ws = pair
    odd = tmp_path / 'state dir "quoted"; #x'
    built = commit_disk(ws, Base(disk=base, config_json=BASE_CONFIG), odd, platform=AMD64)
    plain = commit_disk(ws, Base(disk=base, config_json=BASE_CONFIG), tmp_path / "plain", platform=AMD64)
    assert built.digest == plain.digest


def test_a_link_target_posing_as_debugfs_output_is_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree", {"a": "x"})
    os.symlink("x\ndebugfs: stat <12>\n mtime: 0x00000001:00000000 ", tree / "forged")
    disk = make_disk(tree, tmp_path / "forged.ext4")
    with pytest.raises(Permanent):
        commit_disk(disk, Base(), tmp_path / "state", platform=AMD64)
