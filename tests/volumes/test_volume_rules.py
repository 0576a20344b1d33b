"""Volume and host-folder rules without a VM: specs, the store, claims, the QEMU wiring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from microagent.errors import Conflict, InvalidRequest, NotFound, Unsupported
from microagent.supervisors.qemu.argv import qemu_argv
from microagent.vmkit.types import Config, Disk, Share, parse_request
from microagent.workspace import volumes as vols

MICROAGENT = str(Path(sys.executable).parent / "microagent")


@pytest.mark.parametrize("spec", [
    "data", "data:", "data:relative", "data:/", "data:/proc", "data:/proc/x", "data:/sys", "data:/dev/shm",
    "data:/a/../b", "data:/a/./b", "data:/x:rw2", "bad/name:/x", "-x:/x", "data:/x\n", "/nonexistent-h-vol:/x",
    "",
])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(InvalidRequest):
        vols.parse_mount_spec(spec)


def test_good_specs(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert vols.parse_mount_spec("data:/data") == vols.MountSpec("data", "/data", False)
    assert vols.parse_mount_spec("data://a//b/:ro") == vols.MountSpec("data", "/a/b", True)
    m = vols.parse_mount_spec(f"{link}:/w:rw")
    assert m == vols.MountSpec(str(tmp_path), "/w", False) and m.is_folder  # symlinks resolved on the host
    with pytest.raises(InvalidRequest, match="overlap"):
        vols.parse_mount_specs(["a:/data", "b:/data/sub"])
    with pytest.raises(InvalidRequest, match="twice"):
        vols.parse_mount_specs(["a:/x", "a:/y"])


def test_store_and_claims(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    doc = vols.create_volume(root, "v1", 16)
    disk = Path(doc["path"])
    assert disk.stat().st_size == 16 * 1024 * 1024
    assert disk.stat().st_mode & 0o777 == 0o600 and disk.parent.stat().st_mode & 0o777 == 0o700
    with pytest.raises(Conflict):
        vols.create_volume(root, "v1", 16)
    with pytest.raises(InvalidRequest):
        vols.create_volume(root, "v2", 1)
    with pytest.raises(NotFound):
        vols.claim(root, "ws", [vols.MountSpec("nope", "/x")])
    (root / "workspaces" / "a").mkdir(parents=True)  # a's claim is live while it exists
    vols.claim(root, "a", [vols.MountSpec("v1", "/x")])
    with pytest.raises(Conflict, match="workspace a"):
        vols.claim(root, "b", [vols.MountSpec("v1", "/x", read_only=True)])
    with pytest.raises(Conflict, match="workspace a"):
        vols.remove_volume(root, "v1")
    # gone without a delete, and its creator too (a crash): the claim is stale
    (root / "workspaces" / "a").rmdir()
    claim_file = root / "volumes" / "v1" / "claims" / "a"
    assert json.loads(claim_file.read_text())["pid"] == os.getpid()  # live while its creator runs
    claim_file.write_text(json.dumps({"mode": "rw", "pid": os.getpid(), "starttime": 0}))
    assert vols.holders(root, "v1") == []
    (root / "workspaces" / "r1").mkdir()
    (root / "workspaces" / "r2").mkdir()
    vols.claim(root, "r1", [vols.MountSpec("v1", "/x", read_only=True)])
    vols.claim(root, "r2", [vols.MountSpec("v1", "/x", read_only=True)])  # readers share
    with pytest.raises(Conflict):
        vols.claim(root, "w", [vols.MountSpec("v1", "/x")])
    vols.release(root, "r1")
    vols.release(root, "r2")
    assert vols.remove_volume(root, "v1")["removed"] and vols.list_volumes(root) == []


def test_folders_need_a_shared_filesystem_or_a_snapshot_disk() -> None:
    folder = [vols.MountSpec("/tmp", "/x")]
    with pytest.raises(Unsupported, match="shared filesystem"):
        vols.check_backend(folder, "windows-hyperv")  # VHDs only: no raw ext4 copy either
    vols.check_backend(folder, "firecracker")  # a copy as an ext4 disk (tests/volumes/test_folder_snapshots.py)
    vols.check_backend(folder, "qemu")  # virtiofs with virtiofsd
    vols.check_backend(folder, "apple-vf")  # VirtioFS shares (tests/applevf)
    vols.check_backend([vols.MountSpec("v", "/x")], "firecracker")  # volumes are disks: fine


def test_qemu_wiring() -> None:
    cfg = Config(stateDir="/s", kernelPath="/k", rootfsPath="/r",
                 disks=(Disk(name="volume-v", path="/v.ext4", mountpoint="/data", mode="ro"),),
                 shares=(Share(tag="share0", path="/h", mountpoint="/w"),))
    argv = qemu_argv("qemu", cfg, hostname="h", accel="tcg", share_sockets=["vfs-1.sock"])
    assert "vhost-user-fs-device,chardev=fs0,tag=share0" in argv
    assert "socket,id=fs0,path=vfs-1.sock" in argv
    assert "virtio-mmio.force-legacy=false" in argv  # vhost-user serves virtio 1.0 only
    assert any('"filename": "/v.ext4", "read-only": true' in a for a in argv)
    plain = qemu_argv("qemu", Config(stateDir="/s", kernelPath="/k", rootfsPath="/r"), hostname="h", accel="tcg")
    assert "-global" not in plain  # the device layout of workspaces without folders is unchanged


def test_config_refuses_a_mount_point_twice_and_odd_tags() -> None:
    base = {"command": "start", "identity": {"requestID": "r", "runtimeID": "w", "role": "workload",
                                             "backend": "qemu"},
            "config": {"stateDir": "/s", "kernelPath": "/k", "rootfsPath": "/r",
                       "disks": [{"name": "d", "path": "/d", "mountpoint": "/m"}],
                       "shares": [{"tag": "t", "path": "/h", "mountpoint": "/m"}]}}
    with pytest.raises(InvalidRequest, match="used twice"):
        parse_request(base)
    base["config"]["shares"] = [{"tag": "a,b", "path": "/h", "mountpoint": "/n"}]  # type: ignore[index]
    with pytest.raises(InvalidRequest):
        parse_request(base)


def test_cli_usage_errors_exit_2_before_side_effects(tmp_path: Path) -> None:
    root = tmp_path / "state"
    env = {**os.environ, "MICROAGENT_STATE_DIR": str(root)}
    for args in (["create", "w", "-v", "data"], ["create", "w", "-v", "data:/proc"],
                 ["create", "w", "-v", f"{tmp_path}/missing:/x"], ["run", "-v", "a:/x/../y", "builtin:busybox", "true"],
                 ["volume", "create", "bad/name"], ["volume", "create", "ok", "--size", "1"]):
        proc = subprocess.run([MICROAGENT, *args], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (root / "workspaces" / "w").exists() and vols.list_volumes(root) == []


def test_config_disk_lists_the_mounts() -> None:
    from microagent.supervisors.qemu.backend import QemuBackend

    cfg = Config(stateDir="/s", disks=(Disk(name="volume-v", path="/v", mountpoint="/data", mode="ro"),),
                 shares=(Share(tag="share0", path="/h", mountpoint="/w"),))
    assert QemuBackend().guest_mounts(cfg) == [
        {"type": "ext4", "source": "/dev/vdb", "target": "/data", "ro": True},
        {"type": "virtiofs", "source": "share0", "target": "/w", "ro": False}]
    assert json.dumps(QemuBackend().guest_mounts(Config(stateDir="/s"))) == "[]"


def test_a_kernel_installed_without_virtiofs_is_outdated(tmp_path: Path) -> None:
    from msgspec import structs

    from microagent.kernels.store import KernelRecord, RecordedFile, missing_guest_modules

    old = [{"name": n, "path": f"modules/{n}.ko", "sha256": "0"} for n in ("virtio_mmio", "virtio_blk")]
    rec = KernelRecord(backend="qemu", architecture="x86_64", version="v", image_format="bzImage",
                       source={"type": "deb"}, files={"Image": RecordedFile("Image", "0")}, modules=old,
                       installed_at="", directory=tmp_path)
    assert "virtiofs" in missing_guest_modules(rec)  # so 'kernel install --if-missing' installs it again
    assert missing_guest_modules(structs.replace(rec, source={"type": "file"})) == []


def test_the_state_directory_is_never_shared(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "workspaces").mkdir(parents=True)
    for folder in (root, root / "workspaces"):
        with pytest.raises(InvalidRequest, match="state directory"):
            vols.check_attachable(root, [vols.MountSpec(str(folder), "/x")], "qemu", tmp_path / "no-kernel")


def test_supervisors_without_shares_refuse_them() -> None:
    """The supervisor fails closed too, whoever sent the request."""
    from microagent.supervisors.firecracker.backend import FirecrackerBackend

    cfg = Config(stateDir="/s", shares=(Share(tag="share0", path="/h", mountpoint="/w"),))
    with pytest.raises(Unsupported, match="host folders"):
        FirecrackerBackend().guest_mounts(cfg)
