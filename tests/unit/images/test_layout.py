"""``oci:PATH[:TAG]``: OCI image layouts read into the blob store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microagent.errors import NotFound, Permanent
from microagent.images.blobs import BlobStore, DigestMismatch
from microagent.images.pull import pull
from microagent.images.store import list_images
from support_registry import Entry, build_image, busybox_layer, sha256, write_oci_layout


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_tagged_layout_images(tmp_path: Path, state: Path) -> None:
    one = build_image([busybox_layer()])
    two = build_image([busybox_layer([Entry("etc/two", b"2")])], compression="zstd")
    layout = write_oci_layout(tmp_path / "layout", [("1.0", one), ("2.0", two)])
    img = pull(f"oci:{layout}:2.0", state, architecture="x86_64")
    assert img.digest == two.digest and img.source == "oci-layout"
    assert img.reference == f"oci:{layout}:2.0"
    assert img.layers[0].media_type.endswith("+zstd")
    assert img.layers[0].path.read_bytes() == two.layers[0][0]
    assert pull(f"oci:{layout}:1.0", state, architecture="x86_64").digest == one.digest
    assert {r.reference for r in list_images(state)} == {f"oci:{layout}:1.0", f"oci:{layout}:2.0"}


def test_untagged_single_image_and_ambiguity(tmp_path: Path, state: Path) -> None:
    one = build_image([busybox_layer()])
    single = write_oci_layout(tmp_path / "single", [(None, one)])
    assert pull(f"oci:{single}", state, architecture="x86_64").digest == one.digest
    two = build_image([busybox_layer([Entry("etc/x", b"x")])])
    many = write_oci_layout(tmp_path / "many", [("a", one), ("b", two)])
    with pytest.raises(NotFound, match="2 images") as err:
        pull(f"oci:{many}", state, architecture="x86_64")
    assert "a, b" in err.value.remediation
    with pytest.raises(NotFound, match="no image named 'c'"):
        pull(f"oci:{many}:c", state, architecture="x86_64")


def test_layout_with_index_selects_platform(tmp_path: Path, state: Path) -> None:
    amd = build_image([busybox_layer()], architecture="amd64")
    arm = build_image([busybox_layer([Entry("etc/arm", b"")])], architecture="arm64")
    layout = write_oci_layout(tmp_path / "multi", [], indexes=[("latest", [amd, arm])])
    assert pull(f"oci:{layout}:latest", state, architecture="aarch64").digest == arm.digest
    assert pull(f"oci:{layout}", state, architecture="x86_64").digest == amd.digest
    with pytest.raises(NotFound, match="linux/amd64, linux/arm64"):
        pull(f"oci:{layout}", state, architecture="s390x")


def test_corrupt_layout_blob_is_rejected(tmp_path: Path, state: Path) -> None:
    im = build_image([busybox_layer()])
    layout = write_oci_layout(tmp_path / "bad", [("1", im)])
    blob = layout / "blobs" / "sha256" / im.layer_digests[0].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        pull(f"oci:{layout}:1", state, architecture="x86_64")
    store = BlobStore.for_state(state)
    assert im.layer_digests[0] not in set(store.digests())
    assert list_images(state) == []


def test_missing_and_malformed_layouts(tmp_path: Path, state: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        pull(f"oci:{tmp_path / 'nope'}", state, architecture="x86_64")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Permanent, match="no index.json"):
        pull(f"oci:{tmp_path / 'empty'}", state, architecture="x86_64")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "index.json").write_text("{not json")
    with pytest.raises(Permanent, match="not valid JSON"):
        pull(f"oci:{tmp_path / 'broken'}", state, architecture="x86_64")


def test_skopeo_written_layout_round_trips(tmp_path: Path, state: Path) -> None:
    """A layout written by a real tool (skopeo copies our layout to a new one)."""
    import shutil
    import subprocess

    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (scripts/host-deps.sh installs it)")
    im = build_image([busybox_layer()])
    src = write_oci_layout(tmp_path / "src", [("v1", im)])
    dst = tmp_path / "dst"
    subprocess.run(["skopeo", "--insecure-policy", "copy", f"oci:{src}:v1", f"oci:{dst}:copied"],
                   check=True, capture_output=True)
    img = pull(f"oci:{dst}:copied", state, architecture="x86_64")
    assert img.config_digest == im.config_digest
    assert [l.digest for l in img.layers] == im.layer_digests
    assert json.loads((dst / "index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"] == "copied"
    assert sha256(img.layers[0].path.read_bytes()) == im.layer_digests[0]
