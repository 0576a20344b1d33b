"""``microagent snapshot …``, ``start --from-snapshot`` and ``create --from-snapshot`` on apple-vf,
end to end through the CLI, against ``FakeVirtualization`` (a fake, NOT Virtualization.framework).

The CLI runs as its own process with ``MICROAGENT_APPLEVF_SUPERVISOR``
pointing at ``fake_supervisor.py`` (the real backend behind the real
``serve``; its vmhost the real vmhost process over the fake).  The workspace
is written the way ``create`` would write it (``create --backend apple-vf``
itself refuses a Linux host): its manifest, the real arm64 kernel and the
initramfs with the aarch64 guest init, a raw root disk.  The fake's guest is
the host's guest init in agent mode, so ``exec`` runs on this host (sandboxed
only against clock, hostname and entropy changes): a file the guest writes is
not on the workspace's disk; the disk is checked as a file instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from applevf.fake_supervisor import GUEST_ENV, install
from applevf.harness import aarch64_guest_files, kill_leftovers

from microagent.guestinit import find_guest_init
from microagent.vmkit.types import now_rfc3339
from microagent.workspace.manifest import FileDigest, ImageRecord, Manifest, Verification, save_manifest

CLI = Path(sys.executable).parent / "microagent"
DISK = b"\0" * 8192


class Cli:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(CLI), *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert (done.returncode == 0) == ok, (args, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def disk(self, name: str) -> Path:
        return self.root / "workspaces" / name / "rootfs.ext4"


@pytest.fixture
def cli(tmp_path: Path, guest_init: Path) -> Iterator[Cli]:
    root = tmp_path / "state"
    kernel, _ = aarch64_guest_files()
    ws = root / "workspaces" / "box"
    ws.mkdir(parents=True, mode=0o700)
    (ws / "rootfs.ext4").write_bytes(DISK)
    save_manifest(root, Manifest(
        name="box", image=ImageRecord("builtin:busybox", "sha256:" + "ab" * 32), backend="apple-vf",
        profile="tiny", memoryMiB=256, cpuCount=1, diskSizeMiB=1, createdAt=now_rfc3339(),
        verification=Verification(kernel=FileDigest.of(kernel), rootfsBase=FileDigest.of(ws / "rootfs.ext4"),
                                  init=FileDigest.of(find_guest_init("aarch64")))))
    env = {**os.environ, "MICROAGENT_STATE_DIR": str(root), GUEST_ENV: str(guest_init),
           "MICROAGENT_APPLEVF_SUPERVISOR": str(install(tmp_path / "microagent-applevf-supervisor"))}
    env.pop("MICROAGENT_BACKEND", None)
    yield Cli(root, env)
    for name in ("fork1", "box"):
        subprocess.run([str(CLI), "delete", "-f", name], env=env, capture_output=True, timeout=60)
    left = kill_leftovers(str(root))
    assert not left, f"processes left behind: {left}"


def test_snapshot_restore_fork_and_refusals_through_the_cli(cli: Cli) -> None:
    assert cli.json("start", "box")["state"] == "running"
    taken = cli.json("snapshot", "create", "box", "t1")
    assert taken["tag"] == "t1" and taken["vmm"] == "apple-vf"
    snap = Path(taken["path"])
    assert sorted(p.name for p in snap.iterdir()) == ["disk", "snapshot.json", "state"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in snap.iterdir())
    doc = json.loads((snap / "snapshot.json").read_text())
    assert doc["vmmVersion"] == "fake-vz 1 (not Virtualization.framework)" and '"memMiB":256' in doc["layout"]
    assert "memory" not in doc["files"]  # VZ's saved state holds the memory
    assert [s["tag"] for s in cli.json("snapshot", "ls", "box")["snapshots"]] == ["t1"]
    assert cli.run("exec", "box", "--", "sh", "-c", "echo still running").stdout == "still running\n"

    # restore in place: the snapshot's disk comes back, the guest answers, the generation is new
    cli.disk("box").write_bytes(b"written after the snapshot".ljust(len(DISK), b"\0"))
    cli.run("kill", "box")
    restored = cli.json("start", "box", "--from-snapshot", "t1")
    assert restored["state"] == "running", restored
    assert cli.disk("box").read_bytes() == DISK
    serial = (cli.root / "run" / "box" / "serial.log").read_text()
    assert "[fake-vz] restored from" in serial and "restored (generation 1)" in serial
    assert cli.run("exec", "box", "--", "true").returncode == 0

    # a fork: its own disk copy and VM, beside the source
    forked = cli.json("create", "fork1", "--from-snapshot", "box:t1")
    assert forked["state"] == "running", forked
    assert cli.disk("fork1").read_bytes() == DISK and cli.disk("fork1").stat().st_ino != cli.disk("box").stat().st_ino
    assert cli.run("exec", "fork1", "--", "sh", "-c", "echo fork").stdout == "fork\n"
    assert "restored (generation 1)" in (cli.root / "run" / "fork1" / "serial.log").read_text()
    cli.run("kill", "fork1")
    cli.run("kill", "box")

    # a corrupt state file: refused before anything starts (its sha256 is in the manifest)
    state = bytearray((snap / "state").read_bytes())
    state[10] ^= 0xFF
    (snap / "state").write_bytes(bytes(state))
    corrupt = cli.run("start", "box", "--from-snapshot", "t1", ok=False)
    assert "the state file of snapshot box:t1 changed since it was taken" in corrupt.stderr
    (snap / "state").unlink()
    missing = cli.run("start", "box", "--from-snapshot", "t1", ok=False)
    assert "has no state file" in missing.stderr
    cli.run("snapshot", "rm", "box", "t1")
    assert cli.json("snapshot", "ls", "box")["snapshots"] == []
