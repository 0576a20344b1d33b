"""Apple VF snapshots on Linux, against ``FakeVirtualization`` (a fake, NOT Virtualization.framework).

The backend runs in-process and its vmhost is the real vmhost process, as in
``test_supervisor.py``; the fake implements ``saveMachineStateToURL`` /
``restoreMachineStateFromURL`` (it refuses a running VM, a VM that was
started, an unreadable, corrupt or other-hardware file).  After a restore the
shared lifecycle sends the real guest init (agent mode, sandboxed: its clock,
hostname and entropy calls are swallowed) the ``restore`` session, which it
answers with the restore generation.  What this cannot show: the framework's
own saved state, a guest whose memory comes back (the fake's restored guest
is a new guest init process), the clock or random pool of a real guest.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from applevf.fake_vz import SAVE_FORMAT
from applevf.harness import FAKE_VMHOST, AppleVF

from microagent.errors import Conflict
from microagent.supervisors.applevf import control

FAKE_FRAMEWORK = "fake-vz 1 (not Virtualization.framework)"


def _exec(runtime: Path, *argv: str) -> tuple[int, bytes]:
    from microagent.channel import ExecRequest, open_channel
    from microagent.channel.exec import run

    with open_channel(runtime / "control.sock", hello_timeout=5) as conn:
        result = run(conn, ExecRequest(argv=list(argv)))
    return result.exit_code, result.stdout


def _snapshot(applevf: AppleVF, dest: Path, name: str | None = None) -> dict:
    dest.mkdir(mode=0o700)
    answer = applevf.call("snapshot", name, snapshot={"path": str(dest)})
    assert answer["ok"], answer
    return answer


def _restore_spec(snap: Path, taken: dict, *, private: bool = False, generation: int = 2) -> dict:
    return {"path": str(snap), "private": private, "vmmVersion": taken["runtime"]["vmmVersion"],
            "layout": taken["runtime"]["layout"], "generation": generation}


def _vmhosts(applevf: AppleVF) -> list[str]:
    from applevf.harness import processes_mentioning

    return [args for _, args in processes_mentioning(str(applevf.state_dir)) if "fake_vmhost" in args]


def test_save_needs_a_paused_vm_and_leaves_it_as_it_was(applevf: AppleVF, tmp_path: Path) -> None:
    assert applevf.call("start")["ok"]
    rt = applevf.runtime()
    target = tmp_path / "saved"
    with pytest.raises(Conflict, match="must be paused"):  # the framework's refusal, as the vmhost reports it
        control.call(rt, "save", path=str(target))
    assert not target.exists()
    assert control.call(rt, "state")["vzState"] == "running"
    control.call(rt, "pause")
    saved = control.call(rt, "save", path=str(target))
    assert saved["vzState"] == "paused"
    assert json.loads(target.read_bytes().split(b"\n", 1)[0])["format"] == SAVE_FORMAT
    control.call(rt, "resume")
    assert _exec(rt, "true")[0] == 0
    assert applevf.call("kill")["ok"]


def test_snapshot_restore_in_place(applevf: AppleVF, tmp_path: Path) -> None:
    assert applevf.call("start")["ok"]
    rt = applevf.runtime()
    snap = tmp_path / "snap"
    taken = _snapshot(applevf, snap)
    assert sorted(p.name for p in snap.iterdir()) == ["disk", "state"]  # VZ's state holds the memory
    assert taken["event"]["state"] == "running" and taken["runtime"]["vmm"] == "apple-vf"
    assert taken["runtime"]["vmmVersion"] == FAKE_FRAMEWORK
    layout = json.loads(taken["runtime"]["layout"])
    assert layout["cpus"] == 1 and layout["memMiB"] == 256
    assert layout["disks"] == [["rootfs", False], ["config", True]]
    assert _exec(rt, "true")[0] == 0  # resumed after the save
    assert applevf.runtime_json()["state"] == "running"

    applevf.files.rootfs.write_bytes(b"written after the snapshot")
    assert applevf.call("kill")["ok"]
    hostname = socket.gethostname()
    restored = applevf.call("start", snapshot=_restore_spec(snap, taken, generation=2))
    assert restored["ok"], restored
    assert restored["event"]["state"] == "running"
    assert applevf.files.rootfs.read_bytes() == (snap / "disk").read_bytes() == b"\0" * 4096
    argv = applevf.runtime_json()["argv"]
    assert argv[argv.index("--restore") + 1] == str(snap / "state")
    serial = (rt / "serial.log").read_text()
    assert f"[fake-vz] restored from {snap / 'state'}" in serial
    assert "restored (generation 2)" in serial  # guest init answered the restore session
    assert socket.gethostname() == hostname != "ws1"  # ... in the fake guest's sandbox: this host kept its name
    assert _exec(rt, "sh", "-c", "echo after restore") == (0, b"after restore\n")
    assert applevf.call("inspect")["runtime"]["vmm"]["vzState"] == "running"
    assert applevf.call("kill")["ok"]


def test_snapshot_of_a_paused_workspace_stays_paused(applevf: AppleVF, tmp_path: Path) -> None:
    assert applevf.call("start")["ok"]
    assert applevf.call("pause")["ok"]
    taken = _snapshot(applevf, tmp_path / "snap")
    assert taken["event"]["state"] == "paused"
    assert control.call(applevf.runtime(), "state")["vzState"] == "paused"
    assert applevf.call("resume")["ok"]
    assert _exec(applevf.runtime(), "true")[0] == 0
    assert applevf.call("kill")["ok"]


def test_fork_runs_beside_its_source(applevf: AppleVF, tmp_path: Path) -> None:
    from microagent.images.ext4 import copy_disk

    assert applevf.call("start")["ok"]
    snap = tmp_path / "snap"
    taken = _snapshot(applevf, snap)
    fork_disk = copy_disk(snap / "disk", tmp_path / "fork-rootfs.ext4")  # what the workspace layer does
    forked = applevf.call("start", "fork1", rootfsPath=str(fork_disk),
                          snapshot=_restore_spec(snap, taken, private=True, generation=1))
    assert forked["ok"], forked
    fork_rt = applevf.runtime("fork1")
    assert "restored (generation 1)" in (fork_rt / "serial.log").read_text()
    assert _exec(fork_rt, "sh", "-c", "echo fork") == (0, b"fork\n")
    assert _exec(applevf.runtime(), "sh", "-c", "echo source") == (0, b"source\n")
    assert json.loads((fork_rt / "applevf.json").read_text())["disks"][0]["path"] == str(fork_disk)
    assert (snap / "state").is_file()  # a fork leaves the snapshot reusable
    for name in ("fork1", None):
        assert applevf.call("kill", name)["ok"]


def test_another_layout_or_framework_is_refused_before_anything_runs(applevf: AppleVF, tmp_path: Path) -> None:
    assert applevf.call("start")["ok"]
    snap = tmp_path / "snap"
    taken = _snapshot(applevf, snap)
    assert applevf.call("kill")["ok"]
    applevf.files.rootfs.write_bytes(b"keep me")

    bigger = applevf.call("start", memoryMiB=512, snapshot=_restore_spec(snap, taken))
    assert bigger["error"]["kind"] == "conflict", bigger
    assert "device layout differs" in bigger["error"]["message"] and '"memMiB":512' in bigger["error"]["message"]

    other_os = applevf.call("start", snapshot={**_restore_spec(snap, taken),
                                               "vmmVersion": "macOS 14.5 (23F79), Virtualization.framework 1.0"})
    assert other_os["error"]["kind"] == "conflict", other_os
    assert "macOS 14.5" in other_os["error"]["message"] and FAKE_FRAMEWORK in other_os["error"]["message"]

    (snap / "state").unlink()
    missing = applevf.call("start", snapshot=_restore_spec(snap, taken))
    assert missing["error"]["kind"] == "not_found", missing

    assert applevf.files.rootfs.read_bytes() == b"keep me"  # the disk was never replaced
    assert _vmhosts(applevf) == []


def test_the_fake_framework_refuses_a_corrupt_or_foreign_state(applevf: AppleVF, tmp_path: Path) -> None:
    assert applevf.call("start")["ok"]
    snap = tmp_path / "snap"
    taken = _snapshot(applevf, snap)
    assert applevf.call("kill")["ok"]

    # another hardware configuration, past the supervisor's check (no layout recorded): the framework refuses
    foreign = applevf.call("start", cpuCount=2, snapshot={**_restore_spec(snap, taken), "layout": ""})
    assert foreign["error"]["kind"] == "permanent", foreign
    assert "incompatible with the virtual machine's configuration" in foreign["error"]["message"]
    assert applevf.runtime_json()["state"] == "failed"

    state = bytearray((snap / "state").read_bytes())
    state[10] ^= 0xFF
    (snap / "state").write_bytes(bytes(state))
    corrupt = applevf.call("start", snapshot=_restore_spec(snap, taken))
    assert corrupt["error"]["kind"] == "permanent", corrupt
    assert "corrupt" in corrupt["error"]["message"]
    assert _vmhosts(applevf) == []


def test_a_configuration_the_framework_cannot_save_is_refused_and_keeps_running(tmp_path: Path, vm_files,
                                                                                 guest_init: Path) -> None:
    from applevf.harness import kill_leftovers

    state = tmp_path / "state"
    state.mkdir()
    applevf = AppleVF(state, vm_files, [sys.executable, str(FAKE_VMHOST), "--guest-init", str(guest_init),
                                        "--save-restore-error", "VZVirtioFileSystemDevice cannot be saved"])
    try:
        assert applevf.call("start")["ok"]
        dest = tmp_path / "snap"
        dest.mkdir()
        refused = applevf.call("snapshot", snapshot={"path": str(dest)})
        assert refused["error"]["kind"] == "permanent", refused
        assert "cannot be saved" in refused["error"]["message"]
        assert control.call(applevf.runtime(), "state")["vzState"] == "running"  # resumed after the failure
        assert _exec(applevf.runtime(), "true")[0] == 0
        assert applevf.call("kill")["ok"]
    finally:
        assert kill_leftovers(str(state)) == []


def test_the_fake_restores_only_a_vm_that_never_started(vm_files, tmp_path: Path) -> None:
    from applevf.fake_vz import FakeNSError, FakePlatform, FakeVirtualization

    from microagent.supervisors.applevf.vzconfig import build_configuration, vm_spec
    from microagent.vmkit.types import parse_request

    request = parse_request({"command": "start", "identity": {"requestID": "r", "runtimeID": "ws1",
                                                             "role": "workload", "backend": "apple-vf"},
                             "config": {"stateDir": str(tmp_path), "kernelPath": str(vm_files.kernel),
                                        "rootfsPath": str(vm_files.rootfs)}})
    assert request.config is not None
    vz = FakeVirtualization()
    platform = FakePlatform(vz)
    spec = vm_spec(request.config, "ws1", str(tmp_path / "serial.log"))
    answers: list[object] = []

    def vm() -> object:
        return vz.VZVirtualMachine.alloc().initWithConfiguration_(build_configuration(vz, spec))

    saver = vm()
    for call in (lambda: saver.startWithCompletionHandler_(answers.append),
                 lambda: saver.pauseWithCompletionHandler_(answers.append),
                 lambda: saver.saveMachineStateToURL_completionHandler_(vz.NSURL.fileURLWithPath_(str(tmp_path / "s")),
                                                                        answers.append)):
        call()
        platform.run_slice(0)  # the completion handler runs on the (fake) main queue
    assert answers == [None, None, None] and (tmp_path / "s").is_file()

    saver.restoreMachineStateFromURL_completionHandler_(vz.NSURL.fileURLWithPath_(str(tmp_path / "s")),
                                                        answers.append)
    platform.run_slice(0)
    assert isinstance(answers[-1], FakeNSError) and "never started" in answers[-1].localizedDescription()

    fresh = vm()
    fresh.restoreMachineStateFromURL_completionHandler_(vz.NSURL.fileURLWithPath_(str(tmp_path / "s")),
                                                        answers.append)
    platform.run_slice(0)
    assert answers[-1] is None and fresh.state() == 2  # VZVirtualMachineStatePaused: resume it next
    assert vz.selectors("VZVirtualMachineConfiguration").count("validateWithError_") == 2
