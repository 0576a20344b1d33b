"""A hostile image cannot steer where microagent writes on the host.

Every string an image supplies that ends up in a host path (platform os,
architecture and variant, digests) is checked before use, and every path
built from outside input is checked to stay inside its directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from layer_factory import E, layer
from microagent.errors import Permanent
from microagent.images.model import Platform
from microagent.images.pull import pull
from microagent.images.rootfs import build_base_disk, disk_path

HOSTILE_VARIANT = "x/../../../../outside/pwned"


def _put(blobs: Path, doc: dict[str, object]) -> tuple[str, int]:
    raw = json.dumps(doc, sort_keys=True).encode()
    hexd = hashlib.sha256(raw).hexdigest()
    (blobs / hexd).write_bytes(raw)
    return "sha256:" + hexd, len(raw)


def hostile_layout(root: Path, *, config_platform: dict[str, str] | None = None,
                   index_platform: dict[str, str] | None = None) -> Path:
    """An OCI layout of one busybox-sized image whose config/index say what the test wants."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    lay = layer(root / "src", [E("bin/", "dir"), E("bin/sh", data=b"#!")])
    (blobs / lay.digest.split(":")[1]).write_bytes(lay.path.read_bytes())
    plat = {"architecture": "amd64", "os": "linux", **(config_platform or {})}
    cdig, csize = _put(blobs, {**plat, "config": {"Cmd": ["sh"]},
                               "rootfs": {"type": "layers",
                                          "diff_ids": ["sha256:" + hashlib.sha256(lay.path.read_bytes()).hexdigest()]}})
    mdig, msize = _put(blobs, {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": cdig, "size": csize},
                               "layers": [{"mediaType": lay.media_type, "digest": lay.digest, "size": lay.size}]})
    top: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig,
                              "size": msize}
    if index_platform is not None:
        idig, isize = _put(blobs, {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                   "manifests": [{**top, "platform": {"architecture": "amd64", "os": "linux",
                                                                      **index_platform}}]})
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idig, "size": isize}
    top["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return root


def _outside(tmp: Path, state: Path) -> set[str]:
    """Every path under ``tmp`` that is not the state dir or inside it."""
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*") if p != state and state not in p.parents}


@pytest.fixture
def init(tmp_path: Path) -> Path:
    path = tmp_path / "microagent-init"
    path.write_bytes(b"\x7fELF fake guest init")
    return path


def test_hostile_config_variant_writes_nothing_outside_the_state_dir(tmp_path: Path, init: Path) -> None:
    """The config's ``variant`` became part of the base disk's file name (``../`` and all)."""
    layout = hostile_layout(tmp_path / "layout", config_platform={"variant": HOSTILE_VARIANT})
    state = tmp_path / "deep" / "a" / "b" / "state"
    state.mkdir(parents=True)
    before = _outside(tmp_path, state)
    with pytest.raises(Permanent) as info:
        image = pull(f"oci:{layout}:latest", state, architecture="x86_64")
        build_base_disk(image, state, init)
    assert info.value.kind == "permanent" and info.value.remediation
    assert "variant" in info.value.message
    after = _outside(tmp_path, state)
    assert after == before, f"written outside the state dir: {sorted(after - before)}"
    assert not list(tmp_path.rglob("pwned*"))
    # fail closed: the refused image is not recorded
    assert not (state / "images" / "index.json").exists() or "pwned" not in (state / "images/index.json").read_text()


@pytest.mark.parametrize("field,value", [
    ("variant", HOSTILE_VARIANT), ("variant", ".."), ("variant", "v8\n"), ("os", "linux/../x"),
    ("architecture", "amd64/../../x"), ("variant", "v" * 300), ("variant", "v\x00"),
])
def test_hostile_index_platform_is_refused(tmp_path: Path, field: str, value: str) -> None:
    layout = hostile_layout(tmp_path / "layout", index_platform={field: value})
    with pytest.raises(Permanent) as info:
        pull(f"oci:{layout}:latest", tmp_path / "state", architecture="x86_64", variant="v8")
    assert field in info.value.message and info.value.remediation


@pytest.mark.parametrize("platform", [
    Platform("amd64", "linux", HOSTILE_VARIANT), Platform("../../x", "linux"), Platform("amd64", "linux/.."),
    Platform("amd64", ""), Platform("amd64", "linux", "."),
])
def test_disk_path_refuses_hostile_platforms(tmp_path: Path, platform: Platform) -> None:
    """The sink checks too: a record read back from an old index.json cannot escape."""
    with pytest.raises(Permanent):
        disk_path(tmp_path, "sha256:" + "a" * 64, platform)


@pytest.mark.parametrize("digest", ["sha256:../../x", "sha256:" + "a" * 63 + "/", "../" + "a" * 64, ""])
def test_disk_path_refuses_hostile_digests(tmp_path: Path, digest: str) -> None:
    with pytest.raises(Permanent):
        disk_path(tmp_path, digest, Platform("amd64"))


def test_disk_path_of_a_sane_image_is_inside_the_disks_dir(tmp_path: Path) -> None:
    path = disk_path(tmp_path, "sha256:" + "a" * 64, Platform("arm64", "linux", "v8"))
    assert path == tmp_path / "images" / "disks" / ("a" * 64 + "-linux-arm64-v8.ext4")


def test_layout_blob_that_is_a_symlink_out_of_the_layout_is_refused(tmp_path: Path) -> None:
    """A layout's blob may not point elsewhere on the host (a FIFO, /dev/zero, another user's file)."""
    layout = hostile_layout(tmp_path / "layout")
    index = json.loads((layout / "index.json").read_text())
    hexd = index["manifests"][0]["digest"].split(":")[1]
    blob = layout / "blobs" / "sha256" / hexd
    outside = tmp_path / "elsewhere"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    os.symlink(outside, blob)
    with pytest.raises(Permanent) as info:
        pull(f"oci:{layout}:latest", tmp_path / "state", architecture="x86_64")
    assert "outside" in info.value.message


def test_layout_blob_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    layout = hostile_layout(tmp_path / "layout")
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    blob.unlink()
    os.mkfifo(blob)
    with pytest.raises(Permanent) as info:
        pull(f"oci:{layout}:latest", tmp_path / "state", architecture="x86_64")
    assert "regular file" in info.value.message
