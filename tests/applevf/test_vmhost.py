"""The vmhost's control protocol, driven in-process against the fake VM.

A :class:`~microagent.supervisors.applevf.vmhost.VMHost` serves in a thread
(its loop calls the fake's ``run_slice``, where completion handlers and
delegate calls run, as VZ's do on the main queue); the test speaks the JSON
line protocol to ``vmhost.sock`` through :mod:`~microagent.supervisors.applevf.control`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from applevf.fake_vz import PAUSED, RUNNING, STOPPED, FakePlatform, FakeVirtualization
from applevf.harness import VMFiles

from microagent.errors import Conflict, MicroagentError, PolicyDenied, Transient
from microagent.supervisors.applevf import control
from microagent.supervisors.applevf.vmhost import VMHost
from microagent.supervisors.applevf.vzconfig import vm_spec
from microagent.vmkit.types import parse_request


class Running:
    def __init__(self, host: VMHost, thread: threading.Thread, rt: Path) -> None:
        self.host, self.thread, self.rt = host, thread, rt
        self.code: list[int] = []

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return control.call(self.rt, op, timeout=5, **fields)

    def wait_exit(self, timeout: float = 5) -> int:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "vmhost loop did not end"
        return self.code[0]


def _spec(files: VMFiles, rt: Path, mode: str = "isolated") -> dict[str, Any]:
    request = parse_request({"command": "start", "identity": {"requestID": "r", "runtimeID": "ws1",
                                                             "role": "workload", "backend": "apple-vf"},
                             "config": {"stateDir": str(files.root), "kernelPath": str(files.kernel),
                                        "rootfsPath": str(files.rootfs), "network": {"mode": mode}}})
    assert request.config is not None
    return vm_spec(request.config, "ws1", str(rt / "serial.log"))


@pytest.fixture
def serve(tmp_path: Path, vm_files: VMFiles, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    rt = tmp_path / "rt"
    rt.mkdir()
    monkeypatch.chdir(rt)  # the vmhost binds its sockets relative to its cwd
    started: list[Running] = []

    def start(vz: FakeVirtualization, mode: str = "isolated") -> Running:
        host = VMHost(FakePlatform(vz), _spec(vm_files, rt, mode))
        holder: list[Running] = []

        def run() -> None:
            try:
                host.boot()
                code = host.serve()
            except MicroagentError:
                code = 2
            finally:
                host.close()
            holder[0].code.append(code)

        thread = threading.Thread(target=run, daemon=True)
        running = Running(host, thread, rt)
        holder.append(running)
        thread.start()
        started.append(running)
        deadline = time.monotonic() + 5
        while host.state == "starting" and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.host.term_requested = True
            running.thread.join(5)
        for vm in running.host.platform.vz.vms:  # type: ignore[attr-defined]
            vm._end_guest()


def test_state_transitions_and_completion_handlers(serve: Any) -> None:
    vz = FakeVirtualization()
    vm = serve(vz)
    state = vm.call("state")
    assert (state["state"], state["vzState"], state["pid"]) == ("running", "running", os.getpid())
    assert state["canPause"] and state["canStop"] and not state["canResume"]
    assert os.path.exists(vm.rt / "vsock.sock") and os.path.exists(vm.rt / "vmhost.sock")
    assert vz.selectors("VZVirtualMachine") == ["initWithConfiguration_", "setDelegate_",
                                                "startWithCompletionHandler_"]

    paused = vm.call("pause")
    assert (paused["state"], paused["vzState"]) == ("paused", "paused")
    assert vz.vms[0].state() == PAUSED
    with pytest.raises(Conflict, match="cannot pause"):
        vm.call("pause")
    resumed = vm.call("resume")
    assert (resumed["state"], resumed["vzState"]) == ("running", "running")
    assert vz.vms[0].state() == RUNNING
    assert vm.call("request-stop") == {"ok": True}

    assert vm.call("stop")["state"] == "stopping"
    assert vm.wait_exit() == 0
    assert vz.vms[0].state() == STOPPED
    assert vz.selectors("VZVirtualMachine")[-4:] == ["pauseWithCompletionHandler_", "resumeWithCompletionHandler_",
                                                     "requestStopWithError_", "stopWithCompletionHandler_"]
    assert not os.path.exists(vm.rt / "vmhost.sock") and not os.path.exists(vm.rt / "vsock.sock")


def test_sigterm_flag_stops_the_vm(serve: Any) -> None:
    vz = FakeVirtualization()
    vm = serve(vz)
    vm.host.term_requested = True  # what the SIGTERM handler sets
    assert vm.wait_exit() == 0
    assert "stopWithCompletionHandler_" in vz.selectors("VZVirtualMachine")


def test_start_error_is_fatal(serve: Any, capfd: pytest.CaptureFixture[str]) -> None:
    vz = FakeVirtualization()
    vz.start_error = "no hypervisor"
    vm = serve(vz)
    assert vm.wait_exit() == 2
    err = capfd.readouterr().err
    line = next(l for l in err.splitlines() if l.startswith(control.ERROR_LINE))
    assert json.loads(line[len(control.ERROR_LINE):])["message"] == \
        "Virtualization.framework could not start the VM: no hypervisor"


def test_stopped_with_error_exits_1(serve: Any) -> None:
    vz = FakeVirtualization()
    vm = serve(vz)
    vz.vms[0]._delegate.virtualMachine_didStopWithError_(vz.vms[0], type("E", (), {
        "localizedDescription": lambda self: "internal VZ error"})())
    assert vm.wait_exit() == 1
    assert vm.host.state == "error"


def test_guest_power_off_ends_the_host(serve: Any, guest_init: Path) -> None:
    from microagent.channel import open_channel

    vz = FakeVirtualization(guest_init=str(guest_init))
    vm = serve(vz)
    with open_channel(vm.rt / "vsock.sock", hello_timeout=5) as conn:  # through the bridge
        conn.shutdown("poweroff", grace_s=0.5)
    assert vm.wait_exit() == 0
    assert ("VZVirtualMachine", "guestDidStop", ()) in vz.calls


def test_bridge_waits_for_the_guest_to_listen(serve: Any, guest_init: Path) -> None:
    """A client connected before guest init listens is held (connect retried), not dropped."""
    from microagent.channel import ExecRequest, open_channel
    from microagent.channel.exec import run

    vz = FakeVirtualization(guest_init=str(guest_init))
    vm = serve(vz)
    vz.vms[0].guest.kill()  # no guest listening ...
    vz.vms[0].guest.wait()
    vz.vms[0].guest = None
    os.unlink(vm.rt / "fake-guest.sock")
    result: list[Any] = []

    def client() -> None:
        with open_channel(vm.rt / "vsock.sock", hello_timeout=5) as conn:
            result.append(run(conn, ExecRequest(argv=["echo", "late"])))

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.3)
    refused = [c for c in vz.calls if c[1] == "connectToPort_completionHandler_"]
    assert len(refused) >= 2  # retried
    vm.host.platform.vz.vms[0]._boot_guest()  # ... until it does
    thread.join(10)
    assert result and result[0].stdout == b"late\n"


def test_sever_cuts_vsock_and_network_and_keeps_the_vm(serve: Any, guest_init: Path) -> None:
    vz = FakeVirtualization(guest_init=str(guest_init))
    vm = serve(vz, mode="nat")
    sock, answer = control.open_control(vm.rt, "connect-vsock", port=1024)
    assert answer == {"ok": True, "port": 1024}
    sock.close()
    held = socket.socket(socket.AF_UNIX)
    held.connect(str(vm.rt / "vsock.sock"))
    time.sleep(0.2)
    severed = vm.call("sever")["severed"]
    assert severed[0] == "vsock.sock" and "network" in severed
    assert held.recv(1) == b""  # the open bridge was closed
    assert not os.path.exists(vm.rt / "vsock.sock")
    assert vz.vms[0].networkDevices()[0].attachment() is None
    assert ("VZVirtioNetworkDevice", "setAttachment_", (None,)) in vz.calls
    with pytest.raises(PolicyDenied, match="quarantined"):
        vm.call("connect-vsock", port=1024)
    state = vm.call("state")
    assert state["vzState"] == "running" and state["severed"] == severed
    held.close()


def test_connect_vsock_one_shot_refused_without_guest(serve: Any) -> None:
    vm = serve(FakeVirtualization())
    with pytest.raises(Transient, match="guest vsock port 1024 refused"):
        vm.call("connect-vsock", port=1024)
    with pytest.raises(MicroagentError, match="integer port"):
        vm.call("connect-vsock", port="x")
    with pytest.raises(MicroagentError, match="unknown op"):
        vm.call("explode")


def test_malformed_control_line(serve: Any) -> None:
    vm = serve(FakeVirtualization())
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(vm.rt / "vmhost.sock"))
    sock.sendall(b"not json\n")
    answer = json.loads(control.read_line(sock))
    assert answer["ok"] is False and "JSON object line" in answer["error"]["message"]
    sock.close()
    assert vm.call("state")["state"] == "running"
