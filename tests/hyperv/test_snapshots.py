"""Hyper-V snapshots against FakeHcs (a recording fake, NOT the Host Compute Service).

The real backend runs in-process; FakeHcs implements ``HcsSaveComputeSystem``
(refusing a running system) and ``HcsCreateComputeSystem`` with a
``RestoreState`` (refusing a missing, corrupt or other-hardware file), and
runs the real guest init in agent mode as each system's guest; the real
helper process (``--guest unix:…`` in place of a Hyper-V socket) serves the
channel, so the shared lifecycle's ``restore`` session reaches guest init.
What this cannot show: HCS's own saved state, Hyper-V sockets, a guest
whose memory comes back (the restored guest is a new process).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from applevf.harness import find_guest_init, invoke, kill_leftovers
from hyperv.fake_hcs import FakeGuestHelpers, FakeHcs

from microagent.errors import Conflict
from microagent.images.ext4 import build_ext4, copy_disk
from microagent.images.vhd import FOOTER_SIZE
from microagent.supervisors.hyperv import documents as d
from microagent.supervisors.hyperv.backend import HyperVBackend


class Env:
    def __init__(self, tmp: Path, seed: Path) -> None:
        guest = find_guest_init()
        if guest is None:
            pytest.fail("guest init is not built; run 'make guest' (make test builds it)")
        self.tmp, self.state = tmp, tmp / "state"
        self.seed = copy_disk(seed, tmp / "seed.ext4")
        (tmp / "Image").write_bytes(b"kernel")
        (tmp / "initramfs.cpio").write_bytes(b"initrd")
        self.hcs = FakeHcs(guest_init=str(guest))
        self.helpers = FakeGuestHelpers(self.hcs)
        self.backend = HyperVBackend(hcs=self.hcs, helpers=self.helpers)

    def call(self, command: str, name: str = "ws1", snapshot: dict[str, Any] | None = None,
             **cfg: Any) -> dict[str, Any]:
        config: dict[str, Any] = {"stateDir": str(self.state)}
        if command == "start":
            config.update({"kernelPath": str(self.tmp / "Image"), "initrdPath": str(self.tmp / "initramfs.cpio"),
                           "rootfsPath": str(self.seed), "memoryMiB": 256, "cpuCount": 1, "timeoutSeconds": 10,
                           **cfg})
        raw: dict[str, Any] = {"command": command, "config": config, "identity": {
            "requestID": "r", "runtimeID": name, "role": "workload", "backend": "windows-hyperv"}}
        if snapshot is not None:
            raw["snapshot"] = snapshot
        return invoke(self.backend, raw)

    def runtime(self, name: str = "ws1") -> Path:
        return self.state / "run" / name

    def system_id(self, name: str = "ws1") -> str:
        return d.compute_system_id(str(self.state), name)

    def vhd(self, name: str = "ws1") -> Path:
        return self.state / "workspaces" / name / "rootfs.vhd"


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seed")
    (root / "tree" / "etc").mkdir(parents=True)
    (root / "tree" / "etc" / "hostname").write_text("ws1\n")
    return build_ext4(root / "tree", root / "rootfs.ext4", key="hyperv-snapshots", size_bytes=16 * 2**20)


@pytest.fixture
def env(tmp_path: Path, seed: Path) -> Iterator[Env]:
    e = Env(tmp_path, seed)
    yield e
    e.hcs.close()
    left = kill_leftovers(str(e.state))
    assert not left, f"processes left behind: {left}"


def _exec(runtime: Path, *argv: str) -> tuple[int, bytes]:
    from microagent.channel import ExecRequest, open_channel
    from microagent.channel.exec import run

    with open_channel(runtime / "control.sock", hello_timeout=5) as conn:
        result = run(conn, ExecRequest(argv=list(argv)))
    return result.exit_code, result.stdout


def _snapshot(env: Env, dest: Path) -> dict[str, Any]:
    dest.mkdir(mode=0o700)
    answer = env.call("snapshot", snapshot={"path": str(dest)})
    assert answer["ok"], answer
    return answer


def _restore(snap: Path, taken: dict[str, Any], *, private: bool = False, generation: int = 2) -> dict[str, Any]:
    return {"path": str(snap), "private": private, "vmmVersion": taken["runtime"]["vmmVersion"],
            "layout": taken["runtime"]["layout"], "generation": generation}


def test_hcs_saves_only_a_paused_system(env: Env, tmp_path: Path) -> None:
    assert env.call("start")["ok"]
    sid = env.system_id()
    with pytest.raises(Conflict, match="HCS_E_INVALID_STATE"):
        env.hcs.save_compute_system(sid, json.dumps(d.save_options(str(tmp_path / "x"))), 5)
    assert not (tmp_path / "x").exists() and env.hcs.systems[sid]["State"] == "Running"
    assert env.call("kill")["ok"]


def test_snapshot_restore_in_place(env: Env, tmp_path: Path) -> None:
    assert env.call("start")["ok"]
    sid, snap = env.system_id(), tmp_path / "snap"
    env.hcs.calls.clear()
    taken = _snapshot(env, snap)
    assert [c[0] for c in env.hcs.calls if c[0] != "get_compute_system_properties"] == [
        "pause_compute_system", "save_compute_system", "resume_compute_system"]
    assert env.hcs.documents[f"save:{sid}"] == {"SaveType": "ToFile", "SaveStateFilePath": str(snap / "state")}
    assert sorted(p.name for p in snap.iterdir()) == ["disk", "state"]  # HCS's saved state holds the memory
    assert (snap / "disk").stat().st_size == env.vhd().stat().st_size - FOOTER_SIZE
    assert taken["runtime"]["vmmVersion"] == env.hcs.version
    layout = json.loads(taken["runtime"]["layout"])
    assert layout["memMiB"] == 256 and layout["scsi"]["0"] == [["0", "VirtualDisk", False], ["1", "VirtualDisk", True]]
    assert env.hcs.systems[sid]["State"] == "Running" and _exec(env.runtime(), "true")[0] == 0

    with open(env.vhd(), "r+b") as disk:  # the guest writes after the snapshot
        disk.write(b"written after the snapshot")
    assert env.call("kill")["ok"]
    env.hcs.calls.clear()
    restored = env.call("start", snapshot=_restore(snap, taken, generation=2))
    assert restored["ok"], restored
    doc = env.hcs.documents[f"compute_system:{sid}"]
    assert doc["VirtualMachine"]["RestoreState"] == {"SaveStateFilePath": str(snap / "state")}
    assert ("grant_vm_access", sid, str(snap / "state")) in env.hcs.calls
    with open(env.vhd(), "rb") as disk, open(snap / "disk", "rb") as saved:
        assert disk.read(4096) == saved.read(4096)  # the snapshot's disk, not what came after
    argv = env.helpers.spawned[-1]
    assert argv[argv.index("--generation") + 1] == "2"
    assert "restored (generation 2)" in env.hcs.guest_log(sid).read_text()  # the restore session
    assert _exec(env.runtime(), "sh", "-c", "echo restored") == (0, b"restored\n")
    assert env.call("kill")["ok"]


def test_fork_runs_beside_its_source(env: Env, tmp_path: Path) -> None:
    assert env.call("start")["ok"]
    snap = tmp_path / "snap"
    taken = _snapshot(env, snap)
    fork_seed = copy_disk(snap / "disk", tmp_path / "fork.ext4")  # what the workspace layer does
    forked = env.call("start", "fork1", rootfsPath=str(fork_seed),
                      snapshot=_restore(snap, taken, private=True, generation=1))
    assert forked["ok"], forked
    assert "restored (generation 1)" in env.hcs.guest_log(env.system_id("fork1")).read_text()
    assert _exec(env.runtime("fork1"), "sh", "-c", "echo fork") == (0, b"fork\n")
    assert _exec(env.runtime(), "true")[0] == 0
    assert env.system_id("fork1") != env.system_id() and (snap / "state").is_file()
    for name in ("fork1", "ws1"):
        assert env.call("kill", name)["ok"]


def test_refusals_before_anything_is_created(env: Env, tmp_path: Path) -> None:
    assert env.call("start")["ok"]
    snap = tmp_path / "snap"
    taken = _snapshot(env, snap)
    assert env.call("kill")["ok"]
    seed_before = env.seed.read_bytes()
    env.hcs.calls.clear()

    bigger = env.call("start", memoryMiB=512, snapshot=_restore(snap, taken))
    assert bigger["error"]["kind"] == "conflict" and '"memMiB":512' in bigger["error"]["message"], bigger
    other = env.call("start", snapshot={**_restore(snap, taken), "vmmVersion": "Windows 10.0.26100 (HCS schema 2.1)"})
    assert other["error"]["kind"] == "conflict" and "10.0.26100" in other["error"]["message"], other
    (snap / "state").rename(tmp_path / "state.aside")
    missing = env.call("start", snapshot=_restore(snap, taken))
    assert missing["error"]["kind"] == "not_found", missing
    assert "create_compute_system" not in [c[0] for c in env.hcs.calls]
    assert env.seed.read_bytes() == seed_before


def test_the_fake_hcs_refuses_a_corrupt_or_foreign_state(env: Env, tmp_path: Path) -> None:
    assert env.call("start")["ok"]
    snap = tmp_path / "snap"
    taken = _snapshot(env, snap)
    assert env.call("kill")["ok"]

    foreign = env.call("start", cpuCount=2, snapshot={**_restore(snap, taken), "layout": ""})
    assert foreign["error"]["kind"] == "permanent", foreign
    assert "0x8007000d" in foreign["error"]["message"] and "does not match" in foreign["error"]["message"]

    state = bytearray((snap / "state").read_bytes())
    state[10] ^= 0xFF
    (snap / "state").write_bytes(bytes(state))
    corrupt = env.call("start", snapshot=_restore(snap, taken))
    assert corrupt["error"]["kind"] == "permanent", corrupt
    assert "ERROR_FILE_CORRUPT" in corrupt["error"]["message"]
    assert env.system_id() not in env.hcs.systems
    # HcsCreateComputeSystem refused: no system was made, so the workspace stays as it was recorded
    assert json.loads((env.runtime() / "runtime.json").read_text())["state"] == "stopped"
