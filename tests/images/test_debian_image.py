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
