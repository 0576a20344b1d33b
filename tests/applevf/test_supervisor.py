"""The apple-vf supervisor's whole lifecycle, on Linux, against ``FakeVirtualization``.

The backend runs in-process; its vmhost is the real vmhost *process* (real
sockets, signals, PIDs) whose ``vz`` is the fake; the fake VM's "guest" is the
real guest init in agent mode, reached through the vmhost's vsock bridge, so
the channel helper, exec, halt and quarantine run their production paths.
What this cannot show: Virtualization.framework itself (needs macOS).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from applevf.harness import FAKE_VMHOST, AppleVF


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] != "Z"


def _exec(runtime: Path, *argv: str) -> tuple[int, bytes]:
    from microagent.channel import ExecRequest, open_channel
    from microagent.channel.exec import run

    with open_channel(runtime / "control.sock", hello_timeout=5) as conn:
        result = run(conn, ExecRequest(argv=list(argv)))
    return result.exit_code, result.stdout


def test_lifecycle_start_inspect_pause_quarantine_kill_delete(applevf: AppleVF) -> None:
    started = applevf.call("start")
    assert started["ok"], started
    assert started["event"]["state"] == "running"
    assert started["readiness"]["guestReady"]["ready"] is True
    rt = applevf.runtime()
    pid = started["runtime"]["pid"]
    runtime = applevf.runtime_json()
    assert runtime["pid"] == pid and runtime["backend"] == "apple-vf"
    assert runtime["argv"][:2] == [sys.executable, str(FAKE_VMHOST)]
    assert runtime["argv"][-4:] == ["--state-dir", str(applevf.state_dir / "run"), "--name", "ws1"]
    spec = json.loads((rt / "applevf.json").read_text())
    assert spec["commandLine"].endswith("microagent.config=/dev/vdb")
    assert [d["name"] for d in spec["disks"]] == ["rootfs", "config"]
    assert json.loads((rt / "network.json").read_text())["mode"] == "isolated"
    assert "[fake-vz] booting" in (rt / "serial.log").read_text()

    # the channel: production helper -> unix:vsock.sock -> vmhost bridge -> fake vsock -> guest init
    code, out = _exec(rt, "sh", "-c", "echo hello from the guest")
    assert (code, out) == (0, b"hello from the guest\n")

    inspected = applevf.call("inspect")
    assert inspected["ok"] and inspected["event"]["state"] == "running"
    assert inspected["runtime"]["vmm"]["vzState"] == "running"
    assert inspected["runtime"]["vmm"]["bridges"] == 1  # the channel helper's connection

    again = applevf.call("start")
    assert again["error"]["kind"] == "conflict"

    paused = applevf.call("pause")
    assert paused["event"]["state"] == "paused", paused
    assert applevf.call("inspect")["runtime"]["vmm"]["vzState"] == "paused"
    assert applevf.call("pause")["error"]["kind"] == "conflict"
    resumed = applevf.call("resume")
    assert resumed["event"]["state"] == "running", resumed
    assert applevf.call("resume")["error"]["kind"] == "conflict"
    assert _exec(rt, "true")[0] == 0

    quarantined = applevf.call("quarantine")
    assert quarantined["ok"], quarantined
    assert quarantined["event"]["state"] == "quarantined"
    assert "vsock.sock" in quarantined["event"]["detail"] and f"pid {pid} kept" in quarantined["event"]["detail"]
    assert _alive(pid), "quarantine must keep the vmhost (the VM) alive"
    assert not (rt / "vsock.sock").exists() and not (rt / "control.sock").exists()
    state = applevf.call("inspect")
    assert state["event"]["state"] == "quarantined"
    assert state["runtime"]["vmm"]["severed"][0] == "vsock.sock"
    assert applevf.call("start")["error"]["kind"] == "conflict"
    assert applevf.call("halt")["error"]["kind"] == "conflict"

    refused = applevf.call("delete")
    assert refused["error"]["kind"] == "conflict" and str(pid) in refused["error"]["message"]

    killed = applevf.call("kill")
    assert killed["event"]["state"] == "stopped" and killed["event"]["detail"] == "SIGKILL"
    assert not _alive(pid)
    assert applevf.call("kill")["error"]["kind"] == "conflict"

    deleted = applevf.call("delete")
    assert deleted["ok"] and deleted["event"]["detail"] == "deleted"
    assert not rt.exists()
    assert applevf.call("delete")["event"]["detail"] == "absent"


def test_halt_powers_the_guest_off(applevf: AppleVF) -> None:
    assert applevf.call("start")["ok"]
    pid = applevf.runtime_json()["pid"]
    halted = applevf.call("halt")
    assert halted["ok"], halted
    assert halted["event"]["state"] == "halted"
    assert not _alive(pid)
    log = (applevf.runtime() / "vmm.log").read_text()
    assert "the guest stopped the VM (power-off)" in log and "exiting with status 0" in log
    assert not (applevf.runtime() / "vmhost.sock").exists()


def test_stop_is_sigterm_and_stops_the_vm(applevf: AppleVF) -> None:
    assert applevf.call("start", network={"mode": "nat"})["ok"]
    rt = applevf.runtime()
    assert applevf.runtime_json()["config"]["network"]["mode"] == "nat"
    network = json.loads((rt / "network.json").read_text())
    assert network["mode"] == "vz-nat" and network["attachment"] == "VZNATNetworkDeviceAttachment"
    config_disk = json.loads((rt / "config.disk").read_bytes().rstrip(b"\0"))
    assert config_disk["network"]["interfaces"] == [{"name": "eth0", "dhcp": True}]  # vmnet's DHCP
    assert network["addressing"] == "dhcp (vmnet)"
    stopped = applevf.call("stop")
    assert stopped["event"]["state"] == "stopped" and stopped["event"]["detail"] == "SIGTERM"
    log = (rt / "vmm.log").read_text()
    assert "stopping (SIGTERM)" in log and "exiting with status 0" in log
    assert applevf.call("stop")["error"]["kind"] == "conflict"


def test_stop_fails_when_the_vmhost_survives_sigterm(applevf: AppleVF, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("microagent.supervisors.vmm.STOP_GRACE_S", 0.5)
    assert applevf.call("start", readiness="vmm")["ok"]
    pid = applevf.runtime_json()["pid"]
    os.kill(pid, signal.SIGSTOP)  # cannot act on SIGTERM now
    try:
        answer = applevf.call("stop")
        assert answer["error"]["kind"] == "transient"
        assert applevf.runtime_json()["state"] == "failed"
        assert _alive(pid), "stop must not escalate to SIGKILL"
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 5  # the pending SIGTERM now stops the VM and ends the vmhost
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)


def test_vmhost_dying_shows_as_failed(applevf: AppleVF) -> None:
    assert applevf.call("start")["ok"]
    pid = applevf.runtime_json()["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    answer = applevf.call("inspect")
    assert answer["event"]["state"] == "failed"
    assert "exited while nobody watched" in answer["event"]["detail"]
    assert applevf.call("start")["ok"]  # startable again
    assert applevf.call("kill")["ok"]


def test_start_errors_keep_their_kind_and_leave_nothing(applevf: AppleVF) -> None:
    too_many = applevf.call("start", cpuCount=16)  # the fake Mac allows 1..8
    assert too_many["ok"] is False
    assert too_many["error"]["kind"] == "permanent"
    assert "config.cpuCount must be between 1 and 8" in too_many["error"]["message"]
    assert applevf.runtime_json()["state"] == "failed"

    applevf.backend._vmhost_command = applevf.vmhost_command + ["--start-error", "the hypervisor said no"]
    refused = applevf.call("start")
    assert refused["error"]["kind"] == "permanent"
    assert "could not start the VM: the hypervisor said no" in refused["error"]["message"]


def test_bridged_is_policy_denied_before_anything(applevf: AppleVF) -> None:
    from microagent.errors import PolicyDenied
    from microagent.supervisors.applevf.vzconfig import network_attachment

    try:
        network_attachment("bridged")
    except PolicyDenied as err:
        assert "com.apple.vm.networking" in err.message
    else:
        raise AssertionError("bridged must be refused")
    # the wire format has no bridged mode: validation refuses it as the field's value
    answer = applevf.call("start", network={"mode": "bridged"})
    assert answer["error"]["kind"] == "permanent" and "network.mode" in answer["error"]["message"]
    assert not applevf.runtime().exists()


def test_check_validates_through_the_vmhost(applevf: AppleVF) -> None:
    ok = applevf.call("check")
    assert ok["ok"] and "accepted the configuration" in ok["event"]["detail"]
    applevf.backend._vmhost_command = applevf.vmhost_command + ["--validation-error", "no entitlement"]
    refused = applevf.call("check")
    assert refused["error"]["kind"] == "permanent"
    assert "refused the configuration: no entitlement" in refused["error"]["message"]
    missing = applevf.call("check", kernelPath="/nonexistent/Image")
    assert missing["error"]["kind"] == "not_found"
    assert not applevf.runtime().exists()


def test_host_reports_the_probe(applevf: AppleVF) -> None:
    answer = applevf.call("host")
    assert answer["ok"]
    host = answer["host"]
    assert host["backend"] == "apple-vf" and host["virtualizationSupported"] is True
    assert host["cpuCountRange"] == [1, 8] and host["memoryMiBRange"] == [128, 16384]
    assert host["bridgedNetworkingAvailable"] is False
    assert host["virtualizationEntitlement"] is None  # cannot tell off macOS
