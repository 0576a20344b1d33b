"""Images are pulled for the guest's architecture, from a real registry.

The two images are microagent's own ``builtin:busybox`` builds for x86_64 and
aarch64 (Debian's amd64 and arm64 ``busybox-static``), pushed to Debian's
``docker-registry`` on 127.0.0.1 under one OCI index.  ``--arch aarch64``
must get the arm64 one (its busybox an aarch64 ELF), the host's architecture
the amd64 one, and an image without the guest's architecture is refused
before any disk is built or VM started.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support_registry import OCI_INDEX, RegistryServer, push_blob, push_manifest

from microagent.errors import NotFound
from microagent.guestinit import find_guest_init
from microagent.images.builtin import ensure_busybox_layout
from microagent.images.pull import pull
from microagent.images.resolve import resolve_image
from microagent.paths import kernel_dir, state_root

MICROAGENT = str(Path(sys.executable).parent / "microagent")
ELF_MACHINE = {"amd64": 62, "arm64": 183}
DEFAULT_ROOT = state_root(None)  # read at import, before a test points MICROAGENT_STATE_DIR elsewhere


def _read_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def _push_builtin(registry: RegistryServer, repo: str, layout: Path) -> dict[str, Any]:
    """Push a builtin layout's image by digest; returns its descriptor (with platform) for an index."""
    [top] = json.loads((layout / "index.json").read_text())["manifests"]
    manifest = _read_blob(layout, top["digest"])
    doc = json.loads(manifest)
    for desc in [doc["config"], *doc["layers"]]:
        push_blob(registry.host, repo, _read_blob(layout, desc["digest"]))
    push_manifest(registry.host, repo, top["digest"], manifest, doc["mediaType"])
    arch = json.loads(_read_blob(layout, doc["config"]["digest"]))["architecture"]
    return {"mediaType": doc["mediaType"], "digest": top["digest"], "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"}}


def _push_index(registry: RegistryServer, repo: str, tag: str, descriptors: list[dict[str, Any]]) -> str:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}).encode()
    return push_manifest(registry.host, repo, tag, body, OCI_INDEX)


@pytest.fixture(scope="module")
def images(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``multi:1`` (amd64 + arm64), ``multi:amd64-only`` (an index) and ``single:amd64`` (a manifest)."""
    root = tmp_path_factory.mktemp("builder")
    cached = DEFAULT_ROOT / "images" / "builtin" / "aarch64" / "busybox"
    if cached.is_file():  # the arm64 busybox-static the aarch64 tests already fetched: no second download
        (root / "images" / "builtin" / "aarch64").mkdir(parents=True)
        shutil.copyfile(cached, root / "images" / "builtin" / "aarch64" / "busybox")
    layouts = {arch: ensure_busybox_layout(root, arch) for arch in ("x86_64", "aarch64")}
    desc = {arch: _push_builtin(registry, "arch/multi", layout) for arch, layout in layouts.items()}
    index = _push_index(registry, "arch/multi", "1", [desc["x86_64"], desc["aarch64"]])
    _push_index(registry, "arch/multi", "amd64-only", [desc["x86_64"]])
    _push_builtin(registry, "arch/single", layouts["x86_64"])
    push_manifest(registry.host, "arch/single", "amd64", _read_blob(layouts["x86_64"], desc["x86_64"]["digest"]),
                  desc["x86_64"]["mediaType"])
    return {"amd64": desc["x86_64"]["digest"], "arm64": desc["aarch64"]["digest"], "index": index}


def _busybox_machine(layer: Path) -> int:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.read_bytes()))) as tf:
        member = tf.extractfile("bin/busybox")
        assert member is not None
        head = member.read(20)
    assert head[:4] == b"\x7fELF"
    return int(struct.unpack_from("<H", head, 18)[0])


@pytest.mark.parametrize("arch, oci", [("aarch64", "arm64"), ("x86_64", "amd64"), ("arm64", "arm64")])
def test_index_selects_the_guest_architecture(registry: RegistryServer, images: dict[str, Any], state: Path,
                                              arch: str, oci: str) -> None:
    got = pull(f"{registry.host}/arch/multi:1", state, architecture=arch)
    assert got.digest == images[oci]
    assert str(got.platform) == f"linux/{oci}"
    [layer] = got.layers
    assert _busybox_machine(layer.path) == ELF_MACHINE[oci]
    # pinned by the index digest: the same choice
    assert pull(f"{registry.host}/arch/multi@{images['index']}", state, architecture=arch).digest == images[oci]


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.mark.parametrize("ref, available", [("arch/multi:amd64-only", "it has: linux/amd64"),
                                            ("arch/single:amd64", "it has: linux/amd64")])
def test_missing_architecture_is_refused_before_any_build(registry: RegistryServer, images: dict[str, Any],
                                                          state: Path, ref: str, available: str) -> None:
    with pytest.raises(NotFound) as err:
        resolve_image(f"{registry.host}/{ref}", state, find_guest_init("aarch64"), architecture="aarch64")
    assert err.value.kind == "not_found"
    assert "no image for platform linux/arm64" in err.value.message and available in err.value.message
    assert "architecture" in err.value.remediation
    assert not [p for p in _files_under(state) if p.suffix in (".ext4", ".img", ".raw")]  # no disk built


@pytest.fixture
def a64_cli_state(tmp_path: Path) -> Iterator[Path]:
    """A state root holding only the installed aarch64 QEMU kernel (so ``run`` reaches the image)."""
    src = kernel_dir(DEFAULT_ROOT, "qemu", "aarch64")
    if not (src / "kernel.json").is_file():
        from microagent.kernels import install_kernel

        install_kernel(DEFAULT_ROOT, "qemu", arch="aarch64")
    root = tmp_path / "state"
    shutil.copytree(src, kernel_dir(root, "qemu", "aarch64"), ignore=shutil.ignore_patterns("initramfs-*"))
    yield root


def test_run_arch_aarch64_refuses_an_amd64_only_image(registry: RegistryServer, images: dict[str, Any],
                                                       a64_cli_state: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "MICROAGENT_OUTPUT")}
    env.update(MICROAGENT_STATE_DIR=str(a64_cli_state), HOME=str(tmp_path / "home"))
    proc = subprocess.run([MICROAGENT, "run", "--backend", "qemu", "--arch", "aarch64", "--json",
                           f"{registry.host}/arch/multi:amd64-only", "--", "true"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["error"]["kind"] == "not_found", doc
    assert "linux/arm64" in doc["error"]["message"]
    assert not (a64_cli_state / "workspaces").exists() or not any((a64_cli_state / "workspaces").iterdir())
    assert not [p for p in _files_under(a64_cli_state) if p.suffix in (".ext4", ".img", ".raw")]
