"""``microagent snapshot …``, ``start --from-snapshot`` and ``create --from-snapshot`` on
windows-hyperv, end to end through the CLI, against FakeHcs (a fake, NOT the Host Compute Service).

The fake HCS runs as a service process (compute systems outlive the
supervisor processes, as under HCS) and the CLI reaches the real backend
through ``fake_service.py supervisor`` (``MICROAGENT_HYPERV_SUPERVISOR``),
whose helper is the real helper process on the fake's guest, the real
guest init in agent mode.  The workspace is written the way ``create``
would (``create --backend windows-hyperv`` refuses a Linux host), with this
host's x86_64 kernel file standing in for the Hyper-V kernel (the fake boots
nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from applevf.harness import find_guest_init, kill_leftovers
from hyperv.fake_service import SOCKET_ENV, RemoteHcs, install

from microagent.paths import kernel_dir, state_root
from microagent.supervisors.hyperv import documents as d
from microagent.vmkit.types import now_rfc3339
from microagent.workspace.manifest import FileDigest, ImageRecord, Manifest, Verification, save_manifest

CLI = Path(sys.executable).parent / "microagent"
SERVICE = Path(__file__).resolve().parent / "fake_service.py"
DISK = b"\0" * 65536


class Cli:
    def __init__(self, root: Path, env: dict[str, str], hcs: RemoteHcs) -> None:
        self.root, self.env, self.hcs = root, env, hcs

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(CLI), *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert (done.returncode == 0) == ok, f"{args} exited {done.returncode}: {done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def vhd(self, name: str) -> Path:
        return self.root / "workspaces" / name / "rootfs.vhd"

    def guest_log(self, name: str) -> str:
        return Path(self.hcs.guest_log(d.compute_system_id(str(self.root), name))).read_text()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    guest = find_guest_init()
    if guest is None:
        pytest.fail("guest init is not built; run 'make guest' (make test builds it)")
    kernel = kernel_dir(state_root(None), "qemu", "x86_64") / "Image"
    if not kernel.is_file():
        from microagent.kernels import install_kernel

        install_kernel(state_root(None), "qemu", arch="x86_64")
    root = tmp_path / "state"
    ws = root / "workspaces" / "box"
    ws.mkdir(parents=True, mode=0o700)
    (ws / "rootfs.ext4").write_bytes(DISK)
    save_manifest(root, Manifest(
        name="box", image=ImageRecord("builtin:busybox", "sha256:" + "ab" * 32), backend="windows-hyperv",
        profile="tiny", memoryMiB=256, cpuCount=1, diskSizeMiB=1, createdAt=now_rfc3339(),
        verification=Verification(kernel=FileDigest.of(kernel), rootfsBase=FileDigest.of(ws / "rootfs.ext4"),
                                  init=FileDigest.of(guest))))
    sock = tmp_path / "hcs.sock"
    service = subprocess.Popen([sys.executable, str(SERVICE), "hcs", "--socket", str(sock), "--guest-init", str(guest)],
                               stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not sock.exists():
        assert service.poll() is None and time.monotonic() < deadline, "the fake HCS service did not start"
        time.sleep(0.02)
    env = {**os.environ, "MICROAGENT_STATE_DIR": str(root), SOCKET_ENV: str(sock),
           "MICROAGENT_HYPERV_SUPERVISOR": str(install(tmp_path / "microagent-hyperv-supervisor"))}
    env.pop("MICROAGENT_BACKEND", None)
    try:
        yield Cli(root, env, RemoteHcs(str(sock)))
    finally:
        for name in ("fork1", "box"):
            subprocess.run([str(CLI), "delete", "-f", name], env=env, capture_output=True, timeout=60)
        RemoteHcs(str(sock))._call("stop")
        service.wait(10)
        left = kill_leftovers(str(tmp_path))
        assert not left, f"processes left behind: {left}"


def test_snapshot_restore_fork_through_the_cli(cli: Cli) -> None:
    assert cli.json("start", "box")["state"] == "running"
    taken = cli.json("snapshot", "create", "box", "t1")
    snap = Path(taken["path"])
    assert sorted(p.name for p in snap.iterdir()) == ["disk", "snapshot.json", "state"]
    doc = json.loads((snap / "snapshot.json").read_text())
    assert doc["backend"] == "windows-hyperv" and doc["vmmVersion"] == "fake-hcs Windows 10.0.0 (not HCS)"
    assert "memory" not in doc["files"] and '"memMiB":256' in doc["layout"]
    assert cli.run("exec", "box", "--", "sh", "-c", "echo running").stdout == "running\n"

    with open(cli.vhd("box"), "r+b") as disk:  # the guest writes after the snapshot
        disk.write(b"written after the snapshot")
    cli.run("kill", "box")
    assert cli.json("start", "box", "--from-snapshot", "t1")["state"] == "running"
    with open(cli.vhd("box"), "rb") as disk:
        assert disk.read(len(DISK)) == DISK
    assert "restored (generation 1)" in cli.guest_log("box")
    sid = d.compute_system_id(str(cli.root), "box")
    assert cli.hcs.document(f"compute_system:{sid}")["VirtualMachine"]["RestoreState"] == {
        "SaveStateFilePath": str(snap / "state")}

    assert cli.json("create", "fork1", "--from-snapshot", "box:t1")["state"] == "running"
    assert cli.run("exec", "fork1", "--", "sh", "-c", "echo fork").stdout == "fork\n"
    assert "restored (generation 1)" in cli.guest_log("fork1")
    assert cli.run("exec", "box", "--", "true").returncode == 0
    cli.run("kill", "fork1")
    cli.run("kill", "box")

    (snap / "state").unlink()
    missing = cli.run("start", "box", "--from-snapshot", "t1", ok=False)
    assert "has no state file" in missing.stderr
