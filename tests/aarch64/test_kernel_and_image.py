"""The aarch64 kernel install and builtin:busybox for aarch64, from Debian's real
arm64 packages (no boot)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from microagent.errors import Permanent
from microagent.kernels import install_kernel
from microagent.kernels.debian import deb_cache_dir

ARM64_MAGIC_OFFSET = 0x38
EM_AARCH64 = 183

pytestmark = pytest.mark.slow


def test_installed_image_is_an_arm64_image_with_mmio_modules(aarch64_kernel_dir: Path) -> None:
    record = json.loads((aarch64_kernel_dir / "kernel.json").read_text())
    assert (record["architecture"], record["image_format"]) == ("aarch64", "arm64-Image")
    head = (aarch64_kernel_dir / "Image").read_bytes()[:64]
    assert head[ARM64_MAGIC_OFFSET:ARM64_MAGIC_OFFSET + 4] == b"ARM\x64"
    names = [m["name"] for m in record["modules"]]
    assert {"virtio_mmio", "virtio_blk", "virtio_console"} <= set(names)
    assert names.index("virtio") < names.index("virtio_mmio")  # dependencies load first


def _cached_deb(root: Path, debarch: str) -> Path:
    debs = sorted(deb_cache_dir(root).glob(f"linux-image-*_{debarch}.deb"))
    if not debs:
        pytest.fail(f"no {debarch} kernel package cached (run 'make install')")
    return debs[-1]


@pytest.mark.parametrize(("debarch", "arch"), [("arm64", "x86_64"), ("amd64", "aarch64")])
def test_a_kernel_package_of_the_other_architecture_is_refused(tmp_path: Path, aarch64_kernel_dir: Path,
                                                               default_state_root: Path,
                                                               debarch: str, arch: str) -> None:
    with pytest.raises(Permanent, match=f"is for {debarch}") as err:
        install_kernel(tmp_path, "qemu", deb=_cached_deb(default_state_root, debarch), arch=arch)
    assert "--arch" in err.value.remediation
    assert not (tmp_path / "kernels" / "qemu" / arch).exists()


def test_an_arm64_image_file_is_refused_for_x86_64_and_accepted_for_aarch64(tmp_path: Path,
                                                                            aarch64_kernel_dir: Path) -> None:
    image = aarch64_kernel_dir / "Image"
    with pytest.raises(Permanent, match="arm64 Image for aarch64, not x86_64"):
        install_kernel(tmp_path, "qemu", from_file=image, arch="x86_64")
    rec = install_kernel(tmp_path, "qemu", from_file=image, arch="aarch64")
    assert rec.image_format == "arm64-Image" and rec.modules == []


def test_builtin_busybox_for_aarch64_is_debians_arm64_busybox(tmp_path: Path) -> None:
    from microagent.images import builtin

    layout = builtin.ensure_busybox_layout(tmp_path, "aarch64")
    assert layout != builtin.layout_dir(tmp_path)  # the host's layout is left alone
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["platform"] == {"architecture": "arm64", "os": "linux"}
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    blob = (layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(zlib.decompress(blob, 31))) as tf:
        busybox = tf.extractfile("bin/busybox")
        assert busybox is not None
        head = busybox.read(20)
        links = {m.name: m.linkname for m in tf.getmembers() if m.issym()}
    assert head[:4] == b"\x7fELF" and struct.unpack_from("<H", head, 18)[0] == EM_AARCH64
    assert links["bin/sh"] == "../bin/busybox" and links["usr/bin/env"] == "../../bin/busybox"
    assert len(links) > 200
    # the same busybox gives the same layout: the base disk cache stays valid
    assert builtin.ensure_busybox_layout(tmp_path, "aarch64") == layout
    assert json.loads((layout / "index.json").read_text()) == index
