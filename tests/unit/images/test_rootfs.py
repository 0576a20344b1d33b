"""Base disks from pulled images: cache, guest init, image user, concurrent builders."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from layer_factory import E, debugfs_stat, layer, pulled
from microagent.errors import Permanent
from microagent.images.model import ImageConfig
from microagent.images.rootfs import build_base_disk, disk_path, resolve_user

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002:app:/home/app:/bin/sh\n"
GROUP = b"root:x:0:\nstaff:x:50:app\napp:x:1002:\n"


@pytest.fixture
def init(tmp_path: Path) -> Path:
    path = tmp_path / "microagent-init"
    path.write_bytes(b"\x7fELF fake guest init")
    return path


def merged_usr_image(tmp: Path, user: str = "app") -> object:
    lay = layer(tmp / "blobs", [
        E("usr/sbin/", "dir"), E("sbin", "symlink", link="usr/sbin"),
        E("etc/passwd", data=PASSWD), E("etc/group", data=GROUP),
    ], "gzip")
    return pulled([lay], ImageConfig(cmd=("sh",), user=user))


def test_builds_caches_and_names_the_disk(tmp_path: Path, init: Path) -> None:
    image = merged_usr_image(tmp_path)
    state = tmp_path / "state"
    base = build_base_disk(image, state, init)  # type: ignore[arg-type]
    hexpart = image.digest.split(":")[1]  # type: ignore[attr-defined]
    assert base.disk == state / "images/disks" / f"{hexpart}-linux-amd64.ext4" == disk_path(state, image.digest, image.platform)  # type: ignore[attr-defined]
    side = json.loads(base.disk.with_suffix(".json").read_text())
    assert side["image_user"] == "app" and side["config"]["user"] == "1001:1002"
    assert base.config.user == "1001:1002" and base.config.cmd == ("sh",)
    st = debugfs_stat(base.disk, "/usr/sbin/microagent-init")  # /sbin -> usr/sbin in this image
    assert (st["type"], st["mode"], st["uid"], st["gid"]) == ("regular", 0o755, 0, 0)
    assert debugfs_stat(base.disk, "/sbin")["type"] == "symlink"
    mtime = base.disk.stat().st_mtime_ns
    again = build_base_disk(image, state, init)  # type: ignore[arg-type]
    assert again.disk.stat().st_mtime_ns == mtime and again.config == base.config
    assert not any((state / "images/tmp").iterdir())


def test_a_new_guest_init_rebuilds(tmp_path: Path, init: Path) -> None:
    image = merged_usr_image(tmp_path)
    state = tmp_path / "state"
    first = build_base_disk(image, state, init).disk.read_bytes()  # type: ignore[arg-type]
    init.write_bytes(b"\x7fELF newer guest init")
    second = build_base_disk(image, state, init)  # type: ignore[arg-type]
    assert second.disk.read_bytes() != first
    assert json.loads(second.disk.with_suffix(".json").read_text())["guest_init_sha256"] != ""


def test_concurrent_builders_share_one_build(tmp_path: Path, init: Path) -> None:
    image = merged_usr_image(tmp_path)
    state = tmp_path / "state"
    results: list[object] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(build_base_disk(image, state, init))  # type: ignore[arg-type]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4
    assert len({r.disk for r in results}) == 1  # type: ignore[attr-defined]
    disks = list((state / "images/disks").iterdir())
    assert sorted(p.suffix for p in disks) == [".ext4", ".json", ".lock"]


def test_guest_init_goes_to_a_plain_sbin(tmp_path: Path, init: Path) -> None:
    image = pulled([layer(tmp_path / "blobs", [E("bin/sh", data=b"sh", mode=0o755)])])
    base = build_base_disk(image, tmp_path / "state", init)
    st = debugfs_stat(base.disk, "/sbin/microagent-init")
    assert (st["mode"], st["uid"]) == (0o755, 0)
    assert debugfs_stat(base.disk, "/sbin")["mode"] == 0o755


@pytest.mark.parametrize("user, want", [
    ("", ""), ("app", "1001:1002"), ("1001", "1001:1002"), ("4242", "4242:0"),
    ("app:staff", "1001:50"), ("app:7", "1001:7"), ("root", "0:0"), ("0:0", "0:0"),
])
def test_resolve_user(tmp_path: Path, user: str, want: str) -> None:
    (tmp_path / "usr/etc").mkdir(parents=True)
    (tmp_path / "etc").symlink_to("/usr/etc")  # resolved inside the tree, not on the host
    (tmp_path / "usr/etc/passwd").write_bytes(PASSWD)
    (tmp_path / "usr/etc/group").write_bytes(GROUP)
    assert resolve_user(user, tmp_path) == want


@pytest.mark.parametrize("user, what", [("ghost", "user 'ghost'"), ("app:ghosts", "group 'ghosts'")])
def test_unknown_user_is_a_clear_error(tmp_path: Path, init: Path, user: str, what: str) -> None:
    image = merged_usr_image(tmp_path, user=user)
    with pytest.raises(Permanent) as info:
        build_base_disk(image, tmp_path / "state", init)  # type: ignore[arg-type]
    assert what in info.value.message and "does not exist" in info.value.message
    assert not list((tmp_path / "state/images/disks").glob("*.ext4"))


def test_hostile_layer_fails_before_anything_is_cached(tmp_path: Path, init: Path) -> None:
    lay = layer(tmp_path / "blobs", [E("../../etc/passwd", data=b"x")])
    with pytest.raises(Permanent, match=r"entry '\.\./\.\./etc/passwd' refused"):
        build_base_disk(pulled([lay]), tmp_path / "state", init)
    assert not list((tmp_path / "state/images/disks").glob("*.ext4"))
    assert not any((tmp_path / "state/images/tmp").iterdir())
