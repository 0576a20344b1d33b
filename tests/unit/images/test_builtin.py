"""builtin:busybox is a locally built OCI image that goes through the rootfs pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer_factory import debugfs_stat
from microagent.errors import NotFound
from microagent.images import builtin
from microagent.images.layers import iter_members


@pytest.fixture(autouse=True)
def _need_busybox() -> None:
    try:
        builtin.find_static_busybox()
    except NotFound:
        pytest.skip("busybox-static is not installed")


def test_layout_is_deterministic_and_valid(tmp_path: Path) -> None:
    a = builtin.busybox_pulled(tmp_path / "a")
    b = builtin.busybox_pulled(tmp_path / "b")
    assert a.digest == b.digest and a.layers[0].digest == b.layers[0].digest
    layout = builtin.layout_dir(tmp_path / "a")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == a.digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    assert a.source == "builtin" and a.config.cmd == ("sh",)
    members = list(iter_members(a.layers[0]))
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert "sbin/microagent-init" not in names  # injected by the rootfs build, not part of the image
    kinds = {m.name: m for m in members}
    assert kinds["bin/busybox"].isreg() and kinds["bin/sh"].issym()
    assert kinds["tmp"].mode == 0o1777 and kinds["etc/shadow"].mode == 0o600


def test_reuses_the_layout(tmp_path: Path) -> None:
    first = builtin.busybox_pulled(tmp_path)
    index = builtin.layout_dir(tmp_path) / "index.json"
    before = index.stat().st_mtime_ns
    assert builtin.busybox_pulled(tmp_path).digest == first.digest
    assert index.stat().st_mtime_ns == before


def test_an_unchanged_busybox_is_not_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run checks the layout against busybox: by its size, mtime and inode, and only
    when one of those changed by its SHA-256 (2 MB read and hashed on every run before)."""
    busybox = tmp_path / "busybox"
    busybox.write_bytes(builtin.find_static_busybox().read_bytes())
    busybox.chmod(0o755)
    monkeypatch.setattr(builtin, "find_static_busybox", lambda: busybox)
    first = builtin.busybox_pulled(tmp_path / "state")
    hashed: list[int] = []
    real = builtin.hashlib.sha256
    monkeypatch.setattr(builtin.hashlib, "sha256", lambda data=b"": hashed.append(len(data)) or real(data))
    assert builtin.busybox_pulled(tmp_path / "state").digest == first.digest
    assert 2 * 1024 * 1024 > busybox.stat().st_size not in hashed

    copy = tmp_path / "busybox.new"  # the same bytes in a new file (a reinstall): hashed, layout kept
    copy.write_bytes(busybox.read_bytes())
    copy.chmod(0o755)
    copy.replace(busybox)
    index = builtin.layout_dir(tmp_path / "state") / "index.json"
    before = index.stat().st_mtime_ns
    assert builtin.busybox_pulled(tmp_path / "state").digest == first.digest
    assert busybox.stat().st_size in hashed
    assert index.stat().st_mtime_ns == before


def test_a_new_busybox_makes_a_new_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: after busybox-static changed (an upgrade), the layout was rewritten but
    the image store still answered the first layout's image, so runs kept the old busybox."""
    busybox = tmp_path / "busybox"
    busybox.write_bytes(builtin.find_static_busybox().read_bytes())
    busybox.chmod(0o755)
    monkeypatch.setattr(builtin, "find_static_busybox", lambda: busybox)
    first = builtin.busybox_pulled(tmp_path / "state")
    with busybox.open("ab") as fh:
        fh.write(b"\0" * 16)
    second = builtin.busybox_pulled(tmp_path / "state")
    assert second.digest != first.digest
    assert second.digest == builtin.busybox_pulled(tmp_path / "state").digest


def test_the_fetch_half_reads_the_same_image(tmp_path: Path) -> None:
    pull = pytest.importorskip("microagent.images.pull").pull
    mine = builtin.busybox_pulled(tmp_path)
    theirs = pull(f"oci:{builtin.layout_dir(tmp_path)}:latest", tmp_path, architecture="x86_64")
    assert theirs.digest == mine.digest
    assert [lay.digest for lay in theirs.layers] == [lay.digest for lay in mine.layers]
    assert theirs.config.cmd == mine.config.cmd and theirs.config.env == mine.config.env


def test_busybox_disk(tmp_path: Path) -> None:
    init = tmp_path / "init"
    init.write_bytes(b"\x7fELF init")
    base = builtin.busybox_image(tmp_path / "state", init)
    assert base.reference == "builtin:busybox" and base.disk.stat().st_size == 64 * 1024 * 1024
    assert debugfs_stat(base.disk, "/bin/busybox")["mode"] == 0o755
    assert debugfs_stat(base.disk, "/bin/sh")["type"] == "symlink"
    assert debugfs_stat(base.disk, "/sbin/microagent-init")["mode"] == 0o755
    assert debugfs_stat(base.disk, "/tmp")["mode"] == 0o1777
    assert debugfs_stat(base.disk, "/root")["mode"] == 0o700
