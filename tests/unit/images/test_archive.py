"""``docker-archive:PATH[:REF]``: ``docker save`` tarballs, legacy and OCI-in-tar."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest

from microagent.errors import NotFound, Permanent
from microagent.images.blobs import BlobStore, DigestMismatch
from microagent.images.pull import pull
from microagent.images.store import list_images
from support_registry import Entry, build_image, busybox_layer, tar_layer, write_docker_archive


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _two_images() -> tuple[list[bytes], object, list[bytes], object]:
    raw1 = [busybox_layer()]
    raw2 = [busybox_layer(), tar_layer([Entry("etc", kind="dir"), Entry("etc/app", b"app\n")])]
    return raw1, build_image(raw1, compression="tar", docker=True), raw2, build_image(raw2, compression="tar")


@pytest.mark.parametrize("oci", [False, True], ids=["legacy", "oci-in-tar"])
def test_docker_save_archive(tmp_path: Path, state: Path, oci: bool) -> None:
    raw1, im1, raw2, im2 = _two_images()
    archive = write_docker_archive(tmp_path / "save.tar",
                                   [(["busybox:latest"], im1, raw1), (["me/app:1.0", "me/app:latest"], im2, raw2)],
                                   oci=oci)
    img = pull(f"docker-archive:{archive}:me/app:1.0", state, architecture="x86_64")
    assert img.source == "docker-archive"
    assert img.config_digest == im2.config_digest  # type: ignore[attr-defined]
    assert [l.digest for l in img.layers] == im2.layer_digests  # type: ignore[attr-defined]
    assert all(l.media_type == "application/vnd.oci.image.layer.v1.tar" for l in img.layers)
    assert img.layers[1].path.read_bytes() == raw2[1]
    if oci:
        assert img.digest == im2.digest  # the real manifest, not a synthesised one
    # normalisation: "busybox" names docker.io/library/busybox:latest
    assert pull(f"docker-archive:{archive}:busybox", state, architecture="x86_64").config_digest == \
        im1.config_digest  # type: ignore[attr-defined]
    with pytest.raises(NotFound) as err:
        pull(f"docker-archive:{archive}", state, architecture="x86_64")
    assert "me/app:1.0" in err.value.remediation
    with pytest.raises(NotFound, match="no image tagged"):
        pull(f"docker-archive:{archive}:other:1", state, architecture="x86_64")


def test_single_image_archive_needs_no_ref_and_gzip_archive(tmp_path: Path, state: Path) -> None:
    raw1, im1, _, _ = _two_images()
    archive = write_docker_archive(tmp_path / "one.tar", [(["busybox:latest"], im1, raw1)])
    gz = tmp_path / "one.tar.gz"
    gz.write_bytes(gzip.compress(archive.read_bytes()))
    for path in (archive, gz):
        img = pull(f"docker-archive:{path}", state, architecture="x86_64")
        assert img.config_digest == im1.config_digest  # type: ignore[attr-defined]


def test_archive_layer_not_matching_config_is_rejected(tmp_path: Path, state: Path) -> None:
    raw1, im1, _, _ = _two_images()
    tampered = [raw1[0][:-1024] + b"\x01" + raw1[0][-1023:]]
    archive = write_docker_archive(tmp_path / "bad.tar", [(["busybox:latest"], im1, tampered)])
    with pytest.raises(DigestMismatch):
        pull(f"docker-archive:{archive}", state, architecture="x86_64")
    assert list_images(state) == []
    store = BlobStore.for_state(state)
    assert not any(store.path(d).read_bytes() == tampered[0] for d in store.digests())


def test_archive_config_not_matching_its_name_is_rejected(tmp_path: Path, state: Path) -> None:
    raw1, im1, _, _ = _two_images()
    archive = write_docker_archive(tmp_path / "a.tar", [(["busybox:latest"], im1, raw1)])
    out = tmp_path / "b.tar"
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            if m.name.endswith(".json") and len(m.name) == 69:
                data = data.replace(b'"os": "linux"', b'"os": "linux" ')
                m.size = len(data)
            import io
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(DigestMismatch, match="config"):
        pull(f"docker-archive:{out}", state, architecture="x86_64")


def test_not_an_archive(tmp_path: Path, state: Path) -> None:
    with pytest.raises(NotFound):
        pull(f"docker-archive:{tmp_path / 'missing.tar'}", state, architecture="x86_64")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(Permanent, match="not a readable tar"):
        pull(f"docker-archive:{junk}", state, architecture="x86_64")
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(Permanent, match="no manifest.json"):
        pull(f"docker-archive:{empty}", state, architecture="x86_64")
