"""The Firecracker process model with the real ``firecracker`` binary.

Everything up to the guest: the configuration is accepted, PID and start time
are recorded, the API answers, SIGTERM/SIGKILL semantics, quarantine keeps the
PID, delete refuses while alive, pause/resume through the API, and a VMM that
dies unobserved shows ``failed``.  Workspaces start with ``readiness: "vmm"``
(no guest can boot without hardware KVM).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from microagent.errors import Conflict, Transient
from microagent.supervisors.firecracker.api import FirecrackerAPI
from microagent.host.process import ProcessRef, _starttime, is_alive


def _alive(pid: int, starttime: int) -> bool:
    return is_alive(ProcessRef(pid, starttime))


def _wait_dead(pid: int, starttime: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid, starttime):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _states(rt: Path) -> list[str]:
    return [json.loads(line)["state"] for line in (rt / "events.jsonl").read_text().splitlines()]


def test_start_config_accepted_pid_recorded_api_answers(fc) -> None:
    doc = fc.ok("start", "ws.one")
    rt = fc.runtime_dir("ws.one")
    runtime = fc.runtime("ws.one")
    pid, starttime = runtime["pid"], runtime["starttime"]

    # the answer: the VMM is up, the guest is not awaited
    assert doc["event"]["state"] == "starting" and doc["runtime"]["pid"] == pid
    assert doc["readiness"]["vmmReady"]["ready"] is True
    guest = doc["readiness"]["guestReady"]
    assert guest["ready"] is False and "readiness=vmm" in guest["detail"]
    assert doc["readiness"]["execReady"]["ready"] is False

    # runtime.json names the real process: same pid, same start time, our binary, cwd = runtime dir
    assert runtime["state"] == "starting" and runtime["readiness"] == "vmm"
    assert _starttime(pid) == starttime
    assert os.readlink(f"/proc/{pid}/exe") == str(fc.binary)
    assert os.readlink(f"/proc/{pid}/cwd") == str(rt)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [c.decode() for c in cmdline] == runtime["argv"] == [
        str(fc.binary), "--api-sock", "firecracker.sock", "--config-file", "firecracker.json",
        "--id", "ws-one", "--log-path", "vmm.log", "--level", "Info"]

    # the API answers with our instance id; the VM was started from the config file
    api = FirecrackerAPI(rt / "firecracker.sock")
    info = api.instance_info()
    assert (info.id, info.state, info.vmm_version) == ("ws-one", "Running", "1.12.1")

    # firecracker.json is what we meant, and firecracker runs with exactly that
    written = json.loads((rt / "firecracker.json").read_text())
    assert written["boot-source"]["kernel_image_path"] == str(fc.kernel.image)
    assert written["boot-source"]["initrd_path"] == str(fc.kernel.initrd)
    assert "microagent.hostname=ws.one" in written["boot-source"]["boot_args"]
    assert written["machine-config"] == {"vcpu_count": 1, "mem_size_mib": 128, "smt": False}
    assert written["vsock"] == {"guest_cid": 3, "uds_path": "vsock.sock"}
    live = api.vm_config()
    assert live["boot-source"] == written["boot-source"]
    assert live["vsock"] == written["vsock"]
    # the root disk, then the per-boot config disk the supervisor wrote (read-only, always last)
    assert [(d["drive_id"], d["is_read_only"]) for d in live["drives"]] == [("rootfs", False), ("config", True)]
    # each opened through its runtime-directory symlink (relative: snapshots stay relocatable)
    assert [d["path_on_host"] for d in live["drives"]] == ["drive-rootfs", "drive-config"]
    assert os.readlink(rt / "drive-rootfs") == str(fc.rootfs)
    assert os.readlink(rt / "drive-config") == str(rt / "config.disk")
    config = json.loads((rt / "config.disk").read_bytes().rstrip(b"\0"))
    assert config["hostname"] == "ws.one" and config["network"]["interfaces"] == []
    assert live["network-interfaces"] == []

    # sockets, logs, the channel helper
    assert (rt / "vsock.sock").is_socket() and (rt / "firecracker.sock").is_socket()
    assert "Running Firecracker v1.12.1" in (rt / "vmm.log").read_text()
    assert "[microagent] boot" in (rt / "serial.log").read_text()
    assert _alive(runtime["routerPid"], runtime["routerStarttime"])

    # inspect: still starting (not failed), with what firecracker itself reports
    ins = fc.ok("inspect", "ws.one")
    assert ins["event"]["state"] == "starting" and ins["runtime"]["alive"] is True
    assert ins["runtime"]["vmm"]["state"] == "Running" and ins["runtime"]["vmm"]["id"] == "ws-one"

    # a second start is refused while it runs
    again = fc.call("start", "ws.one")
    assert again["error"]["kind"] == "conflict" and f"pid {pid}" in again["error"]["message"]
    assert fc.ok("kill", "ws.one")["event"]["state"] == "stopped"
    assert _wait_dead(pid, starttime, 0)


def test_extra_disks_and_config_disk_are_attached_in_order(fc, tmp_path: Path) -> None:
    paths = {}
    for name in ("data", "ref", "config"):
        paths[name] = tmp_path / f"{name}.img"
        paths[name].write_bytes(b"\0" * 4096)
    fc.ok("start", disks=[{"name": "data", "path": str(paths["data"]), "mountpoint": "/data"},
                          {"name": "ref", "path": str(paths["ref"]), "mountpoint": "/ref", "mode": "ro"}],
          configDiskPath=str(paths["config"]))
    live = FirecrackerAPI(fc.runtime_dir() / "firecracker.sock").vm_config()
    assert [(d["drive_id"], d["is_read_only"]) for d in live["drives"]] == [
        ("rootfs", False), ("disk-data", False), ("disk-ref", True), ("config", True)]
    assert "microagent.config=/dev/vdd" in live["boot-source"]["boot_args"]
    runtime = fc.runtime()
    doc = fc.ok("kill")  # SIGKILL
    assert doc["event"]["state"] == "stopped" and doc["event"]["detail"] == "SIGKILL"
    assert not _alive(runtime["pid"], runtime["starttime"])
    assert not _alive(runtime["routerPid"], runtime["routerStarttime"])
    assert not (fc.runtime_dir() / "vsock.sock").exists()


def test_stop_is_sigterm_and_firecracker_exits(fc) -> None:
    fc.ok("start")
    runtime = fc.runtime()
    rt = fc.runtime_dir()
    doc = fc.ok("stop")
    assert doc["event"]["state"] == "stopped" and doc["event"]["detail"] == "SIGTERM"
    assert not _alive(runtime["pid"], runtime["starttime"])
    assert not _alive(runtime["routerPid"], runtime["routerStarttime"])
    assert not (rt / "firecracker.sock").exists() and not (rt / "vsock.sock").exists()
    assert (rt / "firecracker.json").is_file()  # kept for forensics
    assert _states(rt) == ["starting", "starting", "stopped"]
    again = fc.call("stop")
    assert again["error"]["kind"] == "conflict" and "not running (state stopped)" in again["error"]["message"]


def test_stop_reports_failed_when_firecracker_survives_sigterm(fc) -> None:
    """A stopped (SIGSTOP) firecracker cannot act on SIGTERM: ``failed``, no silent SIGKILL."""
    fc.ok("start")
    runtime = fc.runtime()
    pid, starttime = runtime["pid"], runtime["starttime"]
    os.kill(pid, signal.SIGSTOP)
    try:
        doc = fc.call("stop")
        assert doc["ok"] is False and doc["error"]["kind"] == "transient"
        assert "still alive 5s after SIGTERM" in doc["error"]["message"] and doc["error"]["remediation"] == "use kill"
        assert _alive(pid, starttime)
        assert fc.runtime()["state"] == "failed"
    finally:
        os.kill(pid, signal.SIGCONT)  # the pending SIGTERM now ends it
    assert _wait_dead(pid, starttime)
    assert fc.ok("inspect")["event"]["state"] == "failed"


def test_quarantine_keeps_the_pid_and_severs_vsock(fc) -> None:
    fc.ok("start")
    ws = fc.state / "workspaces" / "ws"  # what 'create' leaves: delete removes it too
    ws.mkdir(parents=True)
    (ws / "workspace.json").write_text("{}")
    rt = fc.runtime_dir()
    runtime = fc.runtime()
    pid, starttime = runtime["pid"], runtime["starttime"]
    # a host listener for guest-initiated vsock connections to port 5000
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(rt / "vsock.sock_5000"))
    listener.close()

    doc = fc.ok("quarantine")
    assert doc["event"]["state"] == "quarantined" and doc["runtime"] == {"pid": pid, "alive": True}
    detail = doc["event"]["detail"]
    assert "channel helper" in detail and "vsock.sock" in detail and "vsock.sock_5000" in detail
    assert f"pid {pid} kept" in detail
    assert _alive(pid, starttime)
    assert not (rt / "vsock.sock").exists() and not (rt / "vsock.sock_5000").exists()
    assert not (rt / "control.sock").exists()
    assert not _alive(runtime["routerPid"], runtime["routerStarttime"])
    # the API socket is ours (a control path), kept: the VM is still observable
    assert FirecrackerAPI(rt / "firecracker.sock").instance_info().state == "Running"
    ins = fc.ok("inspect")
    assert ins["event"]["state"] == "quarantined" and ins["runtime"]["alive"] is True
    assert ins["readiness"]["guestReady"]["ready"] is False
    assert ins["runtime"]["routerPid"] is None  # inspect does not revive the channel of a quarantined VM

    for command in ("start", "halt"):
        refused = fc.call(command)
        assert refused["error"]["kind"] == "conflict" and "quarantined" in refused["error"]["message"]
    refused = fc.call("delete")
    assert refused["error"]["kind"] == "conflict" and f"pid {pid}" in refused["error"]["message"]
    assert "stop or kill it before delete" in refused["error"]["message"]
    assert _alive(pid, starttime) and fc.runtime()["state"] == "quarantined" and ws.exists()

    assert fc.ok("kill")["event"]["state"] == "stopped"
    assert fc.ok("delete")["event"]["detail"] == "deleted"
    assert not rt.exists() and not ws.exists()
    assert fc.ok("delete")["event"]["detail"] == "absent"  # idempotent


def test_pause_resume_through_the_api_and_the_helper_giving_up(fc) -> None:
    """Pause/resume go through the API (Firecracker's own state follows).  Meanwhile the channel
    helper of this readiness=vmm start (boot timeout 0.5 s) gives up on the guest and exits:
    the workspace stays ``starting`` with the VMM alive, never ``failed``."""
    fc.ok("start", timeoutSeconds=0.5)
    runtime = fc.runtime()
    api = FirecrackerAPI(fc.runtime_dir() / "firecracker.sock")

    assert fc.ok("pause")["event"]["state"] == "paused"
    assert api.instance_info().state == "Paused"
    ins = fc.ok("inspect")
    assert ins["event"]["state"] == "paused" and ins["runtime"]["vmm"]["state"] == "Paused"
    assert ins["readiness"]["guestReady"]["ready"] is False
    again = fc.call("pause")
    assert again["error"]["kind"] == "conflict" and "paused" in again["error"]["message"]
    resumed = fc.ok("resume")
    assert resumed["event"]["state"] == "starting"  # back to where it was (readiness=vmm: guest not up)
    assert api.instance_info().state == "Running"
    again = fc.call("resume")
    assert again["error"]["kind"] == "conflict" and "not paused" in again["error"]["message"]

    # the helper tried the guest until the boot timeout, then exited; that fails nothing
    assert _wait_dead(runtime["routerPid"], runtime["routerStarttime"], 10)
    assert "cannot connect to the guest" in (fc.runtime_dir() / "router.log").read_text()
    doc = fc.ok("inspect")
    assert doc["event"]["state"] == "starting" and doc["runtime"]["alive"] is True
    assert "guest init did not answer within the boot timeout" in doc["event"]["detail"]
    assert doc["runtime"]["routerPid"] is None and doc["runtime"]["vmm"]["state"] == "Running"
    halt = fc.call("halt")
    assert halt["error"]["kind"] == "conflict" and "guest init has not answered" in halt["error"]["message"]
    assert fc.runtime()["state"] == "starting"  # a refused halt records nothing

    # SIGTERM ends a paused firecracker too
    fc.ok("pause")
    assert fc.ok("stop")["event"]["state"] == "stopped"
    assert not _alive(runtime["pid"], runtime["starttime"])
    refused = fc.call("pause")
    assert refused["error"]["kind"] == "conflict" and "not running" in refused["error"]["message"]


def test_external_kill_shows_failed_with_the_reason(fc) -> None:
    fc.ok("start")
    runtime = fc.runtime()
    pid, starttime = runtime["pid"], runtime["starttime"]
    os.kill(pid, signal.SIGKILL)
    assert _wait_dead(pid, starttime)
    doc = fc.ok("inspect")
    assert doc["event"]["state"] == "failed"
    assert f"firecracker (pid {pid}) exited while nobody watched" in doc["event"]["detail"]
    assert doc["runtime"]["alive"] is False
    assert not _alive(runtime["routerPid"], runtime["routerStarttime"])  # the helper went with it
    assert not (fc.runtime_dir() / "vsock.sock").exists()
    assert fc.runtime()["state"] == "failed"
    # a failed workspace can be started again, and deleted
    assert fc.ok("start")["event"]["state"] == "starting"
    assert fc.runtime()["pid"] != pid or fc.runtime()["starttime"] != starttime
    fc.ok("kill")
    fc.ok("delete")


def test_rejected_configuration_fails_with_firecrackers_reason(fc, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-kernel"
    bogus.write_bytes(b"\0" * 4096)
    doc = fc.call("start", kernelPath=str(bogus))
    assert doc["ok"] is False and doc["error"]["kind"] == "permanent"
    message = doc["error"]["message"]
    assert message.startswith("firecracker exited with status 1 while starting the VM: ")
    assert "Invalid Elf magic number" in message  # firecracker's own reason
    assert fc.runtime()["state"] == "failed"
    assert not (fc.runtime_dir() / "firecracker.sock").exists()


def test_long_paths_and_api_errors(fc, tmp_path: Path) -> None:
    """Sockets beyond sun_path (108 bytes): firecracker binds relative to its cwd, we connect through
    /proc/self/fd; API errors carry firecracker's fault_message on our error tree."""
    with pytest.raises(Transient, match="firecracker API GET / failed"):
        FirecrackerAPI(tmp_path / "absent.sock").instance_info()
    deep = fc.state / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    fc.state = deep
    fc.ok("start")
    api = FirecrackerAPI(fc.runtime_dir() / "firecracker.sock")
    assert len(api.path) > 108
    assert api.instance_info().state == "Running"
    with pytest.raises(Conflict, match=r"firecracker refused PATCH /vm \(400\): .*unknown variant `Frozen`"):
        api.request("PATCH", "/vm", {"state": "Frozen"})
    with pytest.raises(Conflict, match=r"firecracker refused PUT /boot-source \(400\)"):
        api.request("PUT", "/boot-source", {"kernel_image_path": "/x"})  # not once the VM started
    assert fc.ok("pause")["event"]["state"] == "paused"  # the supervisor reaches it too
    assert fc.ok("stop")["event"]["state"] == "stopped"


def test_refused_without_hardware_kvm_unless_allowed(fc, kvm) -> None:
    if kvm[0]:
        pytest.skip("this host has hardware KVM: nothing to refuse")
    fc.env["MICROAGENT_FIRECRACKER_ALLOW_NO_KVM"] = "0"
    for command in ("check", "start"):
        doc = fc.call(command)
        assert doc["error"]["kind"] == "policy_denied" and "cannot boot guests here" in doc["error"]["message"]
        assert "MICROAGENT_FIRECRACKER_ALLOW_NO_KVM=1" in doc["error"]["remediation"]
    assert not (fc.runtime_dir() / "runtime.json").exists()  # refused before anything happened


def test_guest_readiness_times_out_without_hardware_kvm(fc, kvm) -> None:
    if kvm[0]:
        pytest.skip("this host has hardware KVM: the guest boots")
    doc = fc.call("start", readiness="guest", timeoutSeconds=1.0)
    assert doc["error"]["kind"] == "transient" and "did not answer within the boot timeout" in doc["error"]["message"]
    runtime = fc.runtime()
    assert runtime["state"] == "failed"
    assert not _alive(runtime["pid"], runtime["starttime"])  # the VMM was killed, not left behind


def test_run_refuses_vmm_readiness(fc) -> None:
    doc = fc.call("run", exec_spec={"argv": ["true"]})
    assert doc["error"]["kind"] == "permanent" and "config.readiness must be 'guest' for run" in doc["error"]["message"]
    assert not fc.runtime_dir().exists()  # nothing was spawned
