"""Host folders on a backend without a shared filesystem: an ext4 copy made at start
(docs/volumes.md, "Firecracker"), and the ``--output`` spec rules.  No VM: the copy is
read back with debugfs; tests/firecracker_slow/test_slow_folders.py mounts one in a guest."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from microagent.errors import InvalidRequest, ResourceExhausted
from microagent.workspace import outputs
from microagent.workspace import volumes as vols


def _debugfs(image: Path, request: str) -> str:
    debugfs = shutil.which("debugfs") or "/sbin/debugfs"
    proc = subprocess.run([debugfs, "-R", request, str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_folder_becomes_a_read_only_disk_with_symlinks_kept_as_links(tmp_path: Path) -> None:
    root, folder = tmp_path / "state", tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.c").write_text("int main;\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("host only\n")
    os.symlink(secret, folder / "escape")  # must arrive as a link, not as the file's content
    os.symlink("/", folder / "rootlink")
    mounts = vols.parse_mount_specs([f"{folder}:/work", f"{folder}/src:/rw:rw"])
    disks, shares = vols.vm_devices(root, mounts, backend="firecracker", workspace="ws")
    assert shares == ()
    assert [(d.name, d.mountpoint, d.mode) for d in disks] == [("folder-0", "/work", "ro"), ("folder-1", "/rw", "rw")]
    image = Path(disks[0].path)
    assert image.parent == root / "workspaces" / "ws" / vols.FOLDER_SNAPSHOTS_DIR
    assert image.stat().st_mode & 0o777 == 0o600 and image.parent.stat().st_mode & 0o777 == 0o700
    assert _debugfs(image, "cat /src/main.c") == "int main;\n"
    link = _debugfs(image, "stat /escape")
    assert "Type: symlink" in link and f"Size: {len(str(secret))}" in link
    assert _debugfs(image, "cat /escape") == str(secret)  # the link's target path, not the host file
    # the next start replaces the copies; a stop removes them
    (folder / "src" / "new.txt").write_text("later\n")
    disks, _ = vols.vm_devices(root, mounts, backend="firecracker", workspace="ws")
    assert _debugfs(Path(disks[1].path), "cat /new.txt") == "later\n"
    vols.remove_folder_snapshots(root, "ws")
    assert not image.parent.exists()
    # ro is the default; :rw is kept in the recorded spec so the next start agrees
    assert [m.to_spec() for m in mounts] == [f"{folder}:/work", f"{folder}/src:/rw:rw"]


def test_a_folder_over_the_bound_is_refused_before_anything_is_built(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "blob").write_bytes(b"x" * 100_000)
    monkeypatch.setattr(vols, "FOLDER_SNAPSHOT_MAX_BYTES", 64 * 1024)
    mounts = vols.parse_mount_specs([f"{folder}:/big"])
    with pytest.raises(ResourceExhausted, match="too large to copy"):
        vols.check_attachable(tmp_path / "state", mounts, "firecracker", tmp_path / "no-kernel")
    with pytest.raises(ResourceExhausted):
        vols.vm_devices(tmp_path / "state", mounts, backend="firecracker", workspace="ws")
    assert not (tmp_path / "state" / "workspaces" / "ws" / vols.FOLDER_SNAPSHOTS_DIR / "0.ext4").exists()


def test_output_specs(tmp_path: Path) -> None:
    spec = outputs.parse_output_spec(f"{tmp_path}/out=/work/out")
    assert spec == outputs.OutputSpec(str(tmp_path / "out"), "/work/out")
    assert outputs.parse_output_spec("rel/dir=/a//b/").host == os.path.abspath("rel/dir")
    (tmp_path / "file").write_text("x")
    for bad, why in ((f"{tmp_path}/file=/x", "not a directory"), ("out", "no =/guest/path"),
                     ("=/x", "no host directory"), ("out=/proc/x", "under /proc"), ("out=/a/../b", "'..'")):
        with pytest.raises(InvalidRequest, match=why):
            outputs.parse_output_spec(bad)
    with pytest.raises(InvalidRequest, match="at most"):
        outputs.parse_output_specs([f"o{i}=/x{i}" for i in range(outputs.MAX_OUTPUTS + 1)])
