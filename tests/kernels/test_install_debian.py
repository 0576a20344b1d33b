"""Install Debian's real cloud kernel for both backends (needs apt or a cached .deb).

The .deb (~27 MB) is downloaded once into ``<repo>/.cache/debs/`` (gitignored)
and reused across sessions when its size/sha256 still match apt's record.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from microagent.errors import Permanent
from microagent.kernels import debian
from microagent.kernels.modules import modinfo
from microagent.kernels.store import (
    ensure_initramfs,
    install_kernel,
    kernel_status,
    list_kernels,
    load_kernel,
    verify_kernel,
)
from microagent.kernels.vmlinux import KernelFormat, detect_kernel_format, elf_machine, parse_bzimage_header
from microagent.paths import host_arch

REPO = Path(__file__).resolve().parents[2]
DEB_CACHE = REPO / ".cache" / "debs"
EXPECTED_MODULES = [
    "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console",
    "failover", "net_failover", "virtio_net",
    "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
]  # fmt: skip
# QEMU also shares host folders over virtiofs (docs/volumes.md); fuse by closure
EXPECTED_QEMU_MODULES = [*EXPECTED_MODULES, "fuse", "virtiofs"]
EXPECTED_BY_BACKEND = {"qemu": EXPECTED_QEMU_MODULES, "firecracker": EXPECTED_MODULES}

pytestmark = pytest.mark.skipif(host_arch() != "x86_64", reason="the Debian cloud kernel tests are x86_64-only")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): _sha(p) for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def kernel_package() -> debian.DebianPackage:
    if shutil.which("apt-cache") is None:
        pytest.skip("apt-cache is not available: not a Debian host")
    try:
        return debian.resolve_kernel_package("x86_64")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"apt cannot resolve linux-image-cloud-amd64: {exc}")


@pytest.fixture(scope="session")
def kernel_deb(kernel_package: debian.DebianPackage) -> Path:
    """The real linux-image-<release>-cloud-amd64 .deb, session- and disk-cached."""
    return debian.download_deb(kernel_package, DEB_CACHE)


@pytest.fixture(scope="module")
def state(tmp_path_factory, kernel_deb) -> Path:
    """A state root with both backends installed from the cached .deb."""
    root = tmp_path_factory.mktemp("state")
    install_kernel(root, "qemu", deb=kernel_deb, arch="x86_64")
    install_kernel(root, "firecracker", deb=kernel_deb, arch="x86_64")
    return root


def _check_common(root: Path, backend: str, kernel_package: debian.DebianPackage) -> None:
    rec = load_kernel(root, backend, "x86_64")
    assert rec.directory == root / "kernels" / backend / "x86_64"
    assert rec.version == kernel_package.name.removeprefix("linux-image-")
    assert rec.source == {"type": "deb", "package": kernel_package.name, "version": kernel_package.version,
                          "architecture": "amd64", "sha256": kernel_package.sha256}  # fmt: skip
    assert [m["name"] for m in rec.modules] == EXPECTED_BY_BACKEND[backend]
    for i, (mod, path) in enumerate(zip(rec.modules, rec.module_files)):
        assert path.name == f"{i:02d}-{mod['name']}.ko"
        data = path.read_bytes()
        assert _sha(path) == mod["sha256"]
        info = modinfo(data)
        assert info["name"] == mod["name"]
        assert info["vermagic"].startswith(rec.version + " ")
    assert sorted(p.name for p in (rec.directory / "modules").iterdir()) == [p.name for p in rec.module_files]
    for name, f in rec.files.items():
        assert _sha(rec.directory / f.path) == f.sha256, name
    result = verify_kernel(root, backend, "x86_64")
    assert result.ok and len(result.checks) == len(rec.files) + len(EXPECTED_BY_BACKEND[backend])
    status = kernel_status(root, backend, "x86_64")
    assert status["status"] == "installed" and status["sha256"] == rec.files["Image"].sha256
    assert status["path"] == str(rec.image) and status["modules"] == len(EXPECTED_BY_BACKEND[backend])


def test_qemu_kernel(state, kernel_package):
    _check_common(state, "qemu", kernel_package)
    rec = load_kernel(state, "qemu", "x86_64")
    assert rec.image_format == "bzImage" and set(rec.files) == {"Image"}
    assert detect_kernel_format(rec.image) is KernelFormat.BZIMAGE
    assert parse_bzimage_header(rec.image.read_bytes()).release == rec.version


def test_firecracker_kernel(state, kernel_package):
    _check_common(state, "firecracker", kernel_package)
    rec = load_kernel(state, "firecracker", "x86_64")
    assert rec.image_format == "vmlinux" and set(rec.files) == {"Image", "bzImage"}
    image = rec.image.read_bytes()
    assert elf_machine(image[:64]) == "x86_64" and image[4] == 2  # ELF64 x86-64
    assert f"Linux version {rec.version} ".encode() in image
    assert rec.files["bzImage"].sha256 == load_kernel(state, "qemu", "x86_64").files["Image"].sha256
    if shutil.which("file"):
        out = subprocess.run(["file", "-b", str(rec.image)], capture_output=True, text=True).stdout
        assert out.startswith("ELF 64-bit LSB executable, x86-64")


def test_list_kernels(state):
    assert [(r.backend, r.architecture) for r in list_kernels(state)] == [
        ("firecracker", "x86_64"), ("qemu", "x86_64"),
    ]  # fmt: skip


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")
def test_initramfs_with_real_modules(state, tmp_path):
    init = tmp_path / "init"
    init.write_bytes(b"\x7fELF placeholder guest init")
    rec = load_kernel(state, "qemu", "x86_64")
    path = ensure_initramfs(rec.directory, init)
    listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=path.open("rb"), capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    assert [n for n in listing if n.endswith(".ko")] == [f"modules/{p.name}" for p in rec.module_files]
    # the virtio drivers and what only they use load for their devices (docs/architecture.md)
    conditions = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "modules/conditions"],
                                stdin=path.open("rb"), capture_output=True, text=True, check=True).stdout
    needed_for = {line.split()[0].split("-", 1)[1]: line.split()[1:] for line in conditions.splitlines()}
    assert needed_for["virtio_net.ko"] == needed_for["failover.ko"] == ["0x0001"]
    assert needed_for["virtiofs.ko"] == needed_for["fuse.ko"] == ["0x001a"]
    assert not {"virtio_mmio.ko", "virtio.ko", "virtio_ring.ko"} & needed_for.keys()
    assert ensure_initramfs(rec.directory, init) == path


def test_default_install_reuses_cached_download(tmp_path, kernel_deb):
    """The no-arguments path: apt resolves, the cache is reused (same inode), install works."""
    cache = debian.deb_cache_dir(tmp_path)
    cache.mkdir(parents=True)
    seeded = cache / kernel_deb.name
    try:
        seeded.hardlink_to(kernel_deb)
    except OSError:
        shutil.copyfile(kernel_deb, seeded)
    inode = seeded.stat().st_ino
    rec = install_kernel(tmp_path, "qemu")
    assert rec.architecture == host_arch() and len(rec.modules) == len(EXPECTED_QEMU_MODULES)
    assert seeded.stat().st_ino == inode and sorted(p.name for p in cache.iterdir()) == [kernel_deb.name]


def test_from_file_with_modules_from_deb(tmp_path, state, kernel_deb):
    bz = load_kernel(state, "qemu", "x86_64").image
    rec = install_kernel(tmp_path, "firecracker", from_file=bz, modules_from_deb=kernel_deb, arch="x86_64")
    assert rec.source["type"] == "file" and rec.source["modules_from"]["package"].startswith("linux-image-")
    assert [m["name"] for m in rec.modules] == EXPECTED_MODULES
    assert rec.files["Image"].sha256 == load_kernel(state, "firecracker", "x86_64").files["Image"].sha256


def test_from_file_without_modules(tmp_path, state):
    bz = load_kernel(state, "qemu", "x86_64").image
    rec = install_kernel(tmp_path, "qemu", from_file=bz, arch="x86_64")
    assert rec.modules == [] and not (rec.directory / "modules").exists()
    assert "no modules recorded" in kernel_status(tmp_path, "qemu", "x86_64")["detail"]


def test_corruption_is_reported_per_file(tmp_path, kernel_deb):
    rec = install_kernel(tmp_path, "firecracker", deb=kernel_deb, arch="x86_64")
    victim = rec.module_files[4]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = verify_kernel(tmp_path, "firecracker", "x86_64")
    assert [(c.name, c.status) for c in result.problems] == [("module:virtio_console", "mismatch")]
    (rec.directory / "bzImage").unlink()
    problems = {(c.name, c.status) for c in verify_kernel(tmp_path, "firecracker", "x86_64").problems}
    assert problems == {("module:virtio_console", "mismatch"), ("bzImage", "missing")}
    status = kernel_status(tmp_path, "firecracker", "x86_64")
    assert status["status"] == "corrupt" and "virtio_console mismatch" in status["detail"]


@pytest.mark.parametrize("backend", ["qemu", "firecracker"])
def test_bad_inputs_leave_the_installed_kernel_untouched(tmp_path, state, kernel_deb, backend):
    root = tmp_path / "s"
    (root / "kernels" / backend).mkdir(parents=True)
    shutil.copytree(state / "kernels" / backend / "x86_64", root / "kernels" / backend / "x86_64")
    kdir = root / "kernels" / backend / "x86_64"
    before = _snapshot(kdir)
    random_file = tmp_path / "random.bin"
    random_file.write_bytes(bytes(range(256)) * 512)
    arm64 = tmp_path / "Image-arm64"
    arm64.write_bytes(b"\x00" * 0x38 + b"ARM\x64" + b"\x00" * 4096)
    truncated_deb = tmp_path / "truncated.deb"
    truncated_deb.write_bytes(kernel_deb.read_bytes()[: 4 << 20])
    bz = (state / "kernels" / "qemu" / "x86_64" / "Image").read_bytes()
    corrupt_bz = tmp_path / "corrupt-bzImage"
    header = parse_bzimage_header(bz)
    corrupt_bz.write_bytes(bz[: header.payload_start + 4096] + b"\x00" * 65536 + bz[header.payload_start + 69632 :])
    cases = [
        ({"from_file": random_file}, "not a kernel image"),
        ({"from_file": arm64}, "arm64 Image for aarch64, not x86_64"),
        ({"from_file": corrupt_bz}, "lz4|corrupt|decompress"),
        ({"deb": random_file}, "not a debian package"),
        ({"deb": truncated_deb}, "unpack|debian package"),
        ({"from_file": arm64, "modules_from_deb": kernel_deb}, "arm64 Image"),
    ]
    for kwargs, message in cases:
        with pytest.raises(Permanent, match=message):
            install_kernel(root, backend, arch="x86_64", **kwargs)
        assert _snapshot(kdir) == before, kwargs
    assert sorted(p.name for p in kdir.parent.iterdir()) == [".x86_64.lock", "x86_64"]
    assert verify_kernel(root, backend, "x86_64").ok


def test_deb_for_another_architecture_is_rejected(tmp_path, kernel_deb):
    with pytest.raises(Permanent, match="is for amd64, not arm64"):
        install_kernel(tmp_path, "qemu", deb=kernel_deb, arch="aarch64")
    assert not (tmp_path / "kernels" / "qemu" / "aarch64").exists()


def test_each_backend_gets_its_own_guest_modules(tmp_path: Path, kernel_deb: Path) -> None:
    """Hyper-V guests need VMBus/storvsc/hv_sock, not virtio-mmio (same Debian package)."""
    from microagent.kernels import install_kernel

    record = install_kernel(tmp_path, "windows-hyperv", deb=kernel_deb)
    names = [m["name"] for m in record.modules]
    assert names.index("hv_vmbus") < names.index("hv_storvsc") < names.index("hv_sock")
    assert "hv_utils" in names and "virtio_mmio" not in names
