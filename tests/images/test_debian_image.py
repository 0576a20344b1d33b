"""A realistic distro image: debootstrap'ed Debian 12 pushed as ``test/debian:12`` and pulled."""

from __future__ import annotations

import shutil
import tarfile
import time
from pathlib import Path

import pytest

from microagent.images.pull import pull
from microagent.images.registry import RequestCounter
from support_registry import RegistryServer, push_debian_image

pytestmark = pytest.mark.slow


def test_debian_12_pull(registry: RegistryServer, tmp_path: Path) -> None:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed; run scripts/host-deps.sh (make install)")
    digest, layer_path = push_debian_image(registry.host)  # built once per machine, then cached

    state = tmp_path / "state"
    t0 = time.monotonic()
    img = pull(f"{registry.host}/test/debian:12", state, architecture="x86_64")
    first = time.monotonic() - t0
    assert img.digest == digest and img.config.cmd == ("bash",)
    [got] = img.layers
    assert got.size == layer_path.stat().st_size and got.media_type.endswith("tar+gzip")
    with tarfile.open(got.path) as tar:
        os_release = tar.extractfile("./etc/os-release").read().decode()  # type: ignore[union-attr]
    assert "VERSION_CODENAME=bookworm" in os_release

    counter = RequestCounter()
    logged = registry.request_count()
    t0 = time.monotonic()
    again = pull(f"{registry.host}/test/debian:12", state, architecture="x86_64", counter=counter)
    second = time.monotonic() - t0
    assert again.digest == digest and counter.count == 0 and registry.request_count() == logged
    print(f"debian:12 layer {got.size / 1e6:.1f} MB: first pull {first:.2f}s, cached pull {second * 1000:.1f} ms")


def test_debian_12_disk_is_the_same_with_the_staging_writer(tmp_path: Path) -> None:
    """A real distro layer (device nodes, setuid, hard links, many directories) gives one byte-identical
    disk whether its files are written by the staging writer process or in-process; e2fsck finds it clean."""
    import hashlib
    import subprocess

    from microagent.images.ext4 import build_ext4
    from microagent.images.layers import extract_layers
    from microagent.images.model import Layer
    from support_registry import debian_rootfs_layer

    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed; run scripts/host-deps.sh (make install)")
    path = debian_rootfs_layer()
    data = path.read_bytes()
    lay = Layer("sha256:" + hashlib.sha256(data).hexdigest(), "application/vnd.oci.image.layer.v1.tar+gzip",
                len(data), path)
    digests = []
    for label, threshold in (("writer", 0), ("in-process", 1 << 62)):
        root = tmp_path / label
        root.mkdir()
        ledger = extract_layers([lay], root, writer_min_bytes=threshold)
        disk = build_ext4(root, tmp_path / f"{label}.ext4", key=lay.digest, ledger=ledger)
        digests.append(hashlib.sha256(disk.read_bytes()).hexdigest())
        shutil.rmtree(root)
    assert digests[0] == digests[1]
    proc = subprocess.run(["e2fsck", "-fn", str(tmp_path / "writer.ext4")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
