"""The kernel store with synthetic kernel files (the real Debian kernel is in tests/kernels/)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import pytest

from microagent.errors import Conflict, NotFound, Permanent, Unsupported
from microagent.kernels.store import (
    ensure_initramfs,
    install_kernel,
    kernel_status,
    list_kernels,
    load_kernel,
    verify_kernel,
)


def _snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def kernels(tmp_path, bzimage_factory, arm64_image_factory, elf_factory):
    files = {
        "bz": bzimage_factory(elf_factory(size=32 * 1024), release="6.1.0-synth"),
        "bz2": bzimage_factory(elf_factory(size=16 * 1024), release="6.1.0-other"),
        "arm64": arm64_image_factory(),
        "random": os.urandom(8192),
        "vmlinux": elf_factory(),
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / "in" / name
        out[name].parent.mkdir(exist_ok=True)
        out[name].write_bytes(data)
    return out


def test_qemu_from_file(tmp_path, kernels):
    rec = install_kernel(tmp_path / "state", "qemu", from_file=kernels["bz"], arch="x86_64")
    kdir = tmp_path / "state" / "kernels" / "qemu" / "x86_64"
    assert rec.directory == kdir and rec.image == kdir / "Image"
    assert (kdir / "Image").read_bytes() == kernels["bz"].read_bytes()
    assert not (kdir / "bzImage").exists()
    assert rec.image_format == "bzImage" and rec.version == "6.1.0-synth"
    assert rec.modules == [] and rec.source["type"] == "file" and rec.source["path"] == str(kernels["bz"])
    doc = json.loads((kdir / "kernel.json").read_text())
    assert doc["files"]["Image"]["sha256"] == hashlib.sha256(kernels["bz"].read_bytes()).hexdigest()
    status = kernel_status(tmp_path / "state", "qemu", "x86_64")
    assert status["status"] == "installed" and "no modules" in status["detail"]
    assert verify_kernel(tmp_path / "state", "qemu", "amd64").ok


def test_firecracker_from_file_extracts_vmlinux(tmp_path, kernels, elf_factory):
    rec = install_kernel(tmp_path, "firecracker", from_file=kernels["bz"], arch="x86_64")
    assert rec.image.read_bytes() == elf_factory(size=32 * 1024)
    assert (rec.directory / "bzImage").read_bytes() == kernels["bz"].read_bytes()
    assert set(rec.files) == {"Image", "bzImage"} and rec.image_format == "vmlinux"
    rec2 = install_kernel(tmp_path, "firecracker", from_file=kernels["vmlinux"], arch="x86_64")
    assert rec2.image_format == "vmlinux" and set(rec2.files) == {"Image"}
    assert not (rec2.directory / "bzImage").exists()


def test_aarch64_image(tmp_path, kernels):
    rec = install_kernel(tmp_path, "qemu", from_file=kernels["arm64"], arch="arm64")
    assert rec.architecture == "aarch64" and rec.image_format == "arm64-Image"
    assert rec.directory.name == "aarch64"


@pytest.mark.parametrize(
    ("bad", "message"),
    [("arm64", "arm64 Image for aarch64, not x86_64"), ("random", "not a kernel image")],
)
@pytest.mark.parametrize("backend", ["qemu", "firecracker"])
def test_bad_input_leaves_installed_kernel_untouched(tmp_path, kernels, backend, bad, message):
    install_kernel(tmp_path, backend, from_file=kernels["bz"], arch="x86_64")
    kdir = tmp_path / "kernels" / backend / "x86_64"
    before = _snapshot(kdir)
    with pytest.raises(Permanent, match=message) as err:
        install_kernel(tmp_path, backend, from_file=kernels[bad], arch="x86_64")
    assert err.value.remediation
    assert _snapshot(kdir) == before
    assert sorted(p.name for p in kdir.parent.iterdir()) == [".x86_64.lock", "x86_64"]


def test_corrupt_bzimage_payload_rejected_for_qemu_too(tmp_path, kernels, bzimage_factory):
    install_kernel(tmp_path, "qemu", from_file=kernels["bz"], arch="x86_64")
    before = _snapshot(tmp_path / "kernels" / "qemu" / "x86_64")
    broken = tmp_path / "broken"
    broken.write_bytes(bzimage_factory(size_field=7))
    with pytest.raises(Permanent, match="decompressed vmlinux"):
        install_kernel(tmp_path, "qemu", from_file=broken, arch="x86_64")
    assert _snapshot(tmp_path / "kernels" / "qemu" / "x86_64") == before


def test_reinstall_replaces(tmp_path, kernels):
    install_kernel(tmp_path, "qemu", from_file=kernels["bz"], arch="x86_64")
    rec = install_kernel(tmp_path, "qemu", from_file=kernels["bz2"], arch="x86_64")
    assert rec.version == "6.1.0-other" and load_kernel(tmp_path, "qemu", "x86_64").version == "6.1.0-other"
    assert rec.image.read_bytes() == kernels["bz2"].read_bytes()


def test_argument_errors(tmp_path, kernels):
    with pytest.raises(Unsupported, match="vbox"):
        install_kernel(tmp_path, "vbox", from_file=kernels["bz"])
    with pytest.raises(Unsupported, match="riscv"):
        install_kernel(tmp_path, "qemu", from_file=kernels["bz"], arch="riscv64")
    with pytest.raises(Permanent, match="not both"):
        install_kernel(tmp_path, "qemu", from_file=kernels["bz"], deb=kernels["random"], arch="x86_64")
    with pytest.raises(Permanent, match="only combine"):
        install_kernel(tmp_path, "qemu", modules_from_deb=kernels["random"], arch="x86_64")
    with pytest.raises(NotFound):
        install_kernel(tmp_path, "qemu", from_file=tmp_path / "missing", arch="x86_64")
    with pytest.raises(Permanent, match="not a debian package"):
        install_kernel(tmp_path, "qemu", deb=kernels["random"], arch="x86_64")
    assert not (tmp_path / "kernels" / "qemu" / "x86_64").exists()


def test_concurrent_install_is_a_conflict(tmp_path, kernels):
    parent = tmp_path / "kernels" / "qemu"
    parent.mkdir(parents=True)
    with open(parent / ".x86_64.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(Conflict, match="another kernel install"):
            install_kernel(tmp_path, "qemu", from_file=kernels["bz"], arch="x86_64")


def test_interrupted_swap_is_recovered(tmp_path, kernels):
    install_kernel(tmp_path, "qemu", from_file=kernels["bz"], arch="x86_64")
    kdir = tmp_path / "kernels" / "qemu" / "x86_64"
    before = _snapshot(kdir)
    kdir.rename(kdir.parent / ".x86_64.old-4242")  # as if killed between the two renames
    (kdir.parent / ".x86_64.install-zzz").mkdir()
    with pytest.raises(Permanent):
        install_kernel(tmp_path, "qemu", from_file=kernels["random"], arch="x86_64")
    assert _snapshot(kdir) == before
    assert sorted(p.name for p in kdir.parent.iterdir()) == [".x86_64.lock", "x86_64"]


def test_verify_reports_each_file(tmp_path, kernels):
    rec = install_kernel(tmp_path, "firecracker", from_file=kernels["bz"], arch="x86_64")
    with open(rec.directory / "bzImage", "r+b") as fh:
        fh.seek(100)
        fh.write(b"X")
    (rec.directory / "Image").unlink()
    result = verify_kernel(tmp_path, "firecracker", "x86_64")
    assert not result.ok
    assert {(c.name, c.status) for c in result.checks} == {("Image", "missing"), ("bzImage", "mismatch")}
    status = kernel_status(tmp_path, "firecracker", "x86_64")
    assert status["status"] == "corrupt" and "Image missing" in status["detail"]
    quick = kernel_status(tmp_path, "firecracker", "x86_64", verify=False)
    assert quick["status"] == "corrupt"


def test_status_missing_and_malformed_record(tmp_path, kernels):
    status = kernel_status(tmp_path, "qemu", "x86_64")
    assert status["status"] == "missing" and status["sha256"] is None
    assert status["path"] == str(tmp_path / "kernels" / "qemu" / "x86_64" / "Image")
    with pytest.raises(NotFound, match="no kernel is installed") as err:
        verify_kernel(tmp_path, "qemu", "x86_64")
    assert "kernel install" in err.value.remediation
    rec = install_kernel(tmp_path, "qemu", from_file=kernels["bz"], arch="x86_64")
    (rec.directory / "kernel.json").write_text("{not json")
    assert kernel_status(tmp_path, "qemu", "x86_64")["status"] == "corrupt"
    (rec.directory / "kernel.json").write_text('{"backend": "qemu"}')
    assert kernel_status(tmp_path, "qemu", "x86_64")["status"] == "corrupt"
    with pytest.raises(Permanent, match="malformed"):
        load_kernel(tmp_path, "qemu", "x86_64")
    assert list_kernels(tmp_path) == []


def test_list_kernels(tmp_path, kernels):
    assert list_kernels(tmp_path) == []
    install_kernel(tmp_path, "qemu", from_file=kernels["bz"], arch="x86_64")
    install_kernel(tmp_path, "firecracker", from_file=kernels["bz"], arch="x86_64")
    install_kernel(tmp_path, "qemu", from_file=kernels["arm64"], arch="aarch64")
    got = [(r.backend, r.architecture) for r in list_kernels(tmp_path)]
    assert got == [("firecracker", "x86_64"), ("qemu", "aarch64"), ("qemu", "x86_64")]


def test_ensure_initramfs_caches_by_content(tmp_path, kernels):
    rec = install_kernel(tmp_path, "qemu", from_file=kernels["bz"], arch="x86_64")
    init = tmp_path / "init"
    init.write_bytes(b"init v1")
    first = ensure_initramfs(rec.directory, init)
    assert first.parent == rec.directory and first.name.startswith("initramfs-") and first.suffix == ".cpio"
    mtime = first.stat().st_mtime_ns
    assert ensure_initramfs(rec.directory, init) == first and first.stat().st_mtime_ns == mtime
    init.write_bytes(b"init v2")
    second = ensure_initramfs(rec.directory, init)
    assert second != first and second.is_file()
    assert verify_kernel(tmp_path, "qemu", "x86_64").ok  # derived files are not part of the record
    with pytest.raises(NotFound, match="guest init"):
        ensure_initramfs(rec.directory, tmp_path / "missing-init")


def test_ensure_initramfs_without_record_uses_sorted_modules(tmp_path):
    kdir = tmp_path / "k"
    (kdir / "modules").mkdir(parents=True)
    for name in ("01-b.ko", "00-a.ko"):
        (kdir / "modules" / name).write_bytes(name.encode())
    init = tmp_path / "init"
    init.write_bytes(b"i")
    blob = ensure_initramfs(kdir, init).read_bytes()
    assert blob.index(b"modules/00-a.ko") < blob.index(b"modules/01-b.ko")


@pytest.mark.parametrize("backend", ["qemu", "firecracker"])
def test_an_x86_kernel_is_refused_for_aarch64(tmp_path, kernels, backend):
    for kind in ("bz", "vmlinux"):
        with pytest.raises(Permanent, match="for x86_64, not aarch64") as err:
            install_kernel(tmp_path, backend, from_file=kernels[kind], arch="aarch64")
        assert "--arch x86_64" in err.value.remediation
    assert not (tmp_path / "kernels" / backend / "aarch64").exists()
