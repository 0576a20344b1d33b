"""FakeHcs: a recording stand-in for HCS/HCN (NOT the real API).

Implements :class:`microagent.supervisors.hyperv.hcs.HcsApi` in memory.
Every call is appended to ``calls`` as ``(method, args...)`` and every JSON
document handed over is kept (parsed) in ``documents``, so tests assert the
exact sequence and content the real API would have received.  Compute
systems move through HCS's states (``Created`` → ``Running`` → ``Stopped``
then disappear); knobs simulate a guest that ignores shutdown and HRESULT
failures.

Save/restore, as HCS documents them: ``save_compute_system`` refuses a system
that is not paused (``HCS_E_INVALID_STATE``), writes the ``SaveStateFilePath``
of its ``SaveOptions`` (the system's hardware — topology and devices without
file paths, endpoints or pipe names — a stand-in for memory, a checksum) and
leaves it paused.  ``create_compute_system`` with ``VirtualMachine.RestoreState``
refuses a missing file (``ERROR_FILE_NOT_FOUND``), a corrupt one
(``ERROR_FILE_CORRUPT``) and one saved from other hardware (``ERROR_INVALID_DATA``).

With ``guest_init``, a started system runs a *guest*: the real guest init in
agent mode on a Unix socket (sandboxed like apple-vf's fake guest:
``applevf/fake_vz.py``), paused with SIGSTOP, ended with the system; and
:class:`FakeGuestHelpers` runs the real helper process against it.  A
restored system's guest is a new guest init: nothing of the saved memory
comes back.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from applevf.fake_vz import read_saved_state, saved_state, start_fake_guest
from microagent.supervisors.hyperv.hcs import (
    ERROR_FILE_CORRUPT,
    ERROR_FILE_NOT_FOUND,
    HCS_E_INVALID_STATE,
    HCS_E_SYSTEM_ALREADY_EXISTS,
    HCS_E_SYSTEM_NOT_FOUND,
    HCN_E_ENDPOINT_NOT_FOUND,
    error_for,
)
from microagent.supervisors.hyperv.helpers import PosixHelpers

ERROR_INVALID_DATA = 0x8007000D


def hardware(document: dict[str, Any]) -> dict[str, Any]:
    """What a saved state is bound to: topology and devices, not the files or endpoints behind them."""
    vm = document["VirtualMachine"]
    devices = copy.deepcopy(vm.get("Devices", {}))
    for ctl in devices.get("Scsi", {}).values():
        for att in ctl.get("Attachments", {}).values():
            att.pop("Path", None)
    for port in devices.get("ComPorts", {}).values():
        port.pop("NamedPipe", None)
    for nic in devices.get("NetworkAdapters", {}).values():
        nic.pop("EndpointId", None)
    return {"topology": vm.get("ComputeTopology"), "devices": devices}


class FakeHcs:
    def __init__(self, guest_init: str | None = None) -> None:
        self.guest_init = guest_init
        self.guests: dict[str, subprocess.Popen[bytes]] = {}
        # short (Unix socket paths); only with a guest: close() removes it
        self.guest_dir = Path(tempfile.mkdtemp(prefix="fhcs-")) if guest_init else Path("/nonexistent-fake-hcs")
        #: what the backend records as the Windows build (a fake's)
        self.version = "fake-hcs Windows 10.0.0 (not HCS)"
        self.calls: list[tuple[Any, ...]] = []
        self.documents: dict[str, Any] = {}
        self.systems: dict[str, dict[str, Any]] = {}
        self.networks: dict[str, Any] = {}
        self.endpoints: dict[str, Any] = {}
        self.ignore_shutdown = False
        self.fail: dict[str, int] = {}  # method -> HRESULT to fail with
        self.next_ip = 2

    def _maybe_fail(self, method: str, what: str) -> None:
        if method in self.fail:
            raise error_for(self.fail[method], what)

    def _system(self, system_id: str, method: str) -> dict[str, Any]:
        sys_ = self.systems.get(system_id)
        if sys_ is None:
            raise error_for(HCS_E_SYSTEM_NOT_FOUND, f"{method}({system_id})")
        return sys_

    def grant_vm_access(self, system_id: str, path: str) -> None:
        self.calls.append(("grant_vm_access", system_id, path))
        self._maybe_fail("grant_vm_access", "HcsGrantVmAccess")

    def create_compute_system(self, system_id: str, document: str, timeout: float) -> None:
        self.calls.append(("create_compute_system", system_id))
        self.documents[f"compute_system:{system_id}"] = json.loads(document)
        self._maybe_fail("create_compute_system", f"HcsCreateComputeSystem({system_id})")
        if system_id in self.systems:
            raise error_for(HCS_E_SYSTEM_ALREADY_EXISTS, f"HcsCreateComputeSystem({system_id})")
        doc = json.loads(document)
        restore = doc["VirtualMachine"].get("RestoreState", {}).get("SaveStateFilePath")
        if restore:
            saved, why = read_saved_state(restore)
            what = f"HcsCreateComputeSystem({system_id})"
            if not Path(restore).is_file():
                raise error_for(ERROR_FILE_NOT_FOUND, what, json.dumps({"Error": f"{restore} does not exist"}))
            if why:
                raise error_for(ERROR_FILE_CORRUPT, what, json.dumps({"Error": why}))
            if saved != hardware(doc):
                raise error_for(ERROR_INVALID_DATA, what, json.dumps(
                    {"Error": "the saved state does not match the virtual machine's configuration"}))
        self.systems[system_id] = {"State": "Created", "RuntimeId": str(uuid.uuid4())}

    def guest_socket(self, vm_id: str) -> Path:
        return self.guest_dir / f"{vm_id[:8]}.sock"

    def guest_log(self, system_id: str) -> Path:
        return self.guest_dir / f"{system_id}.log"

    def _end_guest(self, system_id: str) -> None:
        guest = self.guests.pop(system_id, None)
        if guest is not None and guest.poll() is None:
            guest.send_signal(signal.SIGCONT)
            guest.kill()
            guest.wait()

    def start_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("start_compute_system", system_id))
        self._maybe_fail("start_compute_system", f"HcsStartComputeSystem({system_id})")
        sys_ = self._system(system_id, "HcsStartComputeSystem")
        sys_["State"] = "Running"
        if self.guest_init:
            with open(self.guest_log(system_id), "ab") as log:  # the guest's console, as COM1 would carry it
                self.guests[system_id] = start_fake_guest(self.guest_init, str(self.guest_socket(sys_["RuntimeId"])),
                                                          log)

    def shutdown_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("shutdown_compute_system", system_id))
        self._maybe_fail("shutdown_compute_system", f"HcsShutdownComputeSystem({system_id})")
        self._system(system_id, "HcsShutdownComputeSystem")
        if not self.ignore_shutdown:
            del self.systems[system_id]
            self._end_guest(system_id)

    def terminate_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("terminate_compute_system", system_id))
        self._maybe_fail("terminate_compute_system", f"HcsTerminateComputeSystem({system_id})")
        self._system(system_id, "HcsTerminateComputeSystem")
        del self.systems[system_id]
        self._end_guest(system_id)

    def pause_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("pause_compute_system", system_id))
        sys_ = self._system(system_id, "HcsPauseComputeSystem")
        if sys_["State"] != "Running":
            raise error_for(HCS_E_INVALID_STATE, "HcsPauseComputeSystem")
        sys_["State"] = "Paused"
        if system_id in self.guests:
            self.guests[system_id].send_signal(signal.SIGSTOP)

    def resume_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("resume_compute_system", system_id))
        self._system(system_id, "HcsResumeComputeSystem")["State"] = "Running"
        if system_id in self.guests:
            self.guests[system_id].send_signal(signal.SIGCONT)

    def save_compute_system(self, system_id: str, options: str, timeout: float) -> None:
        self.calls.append(("save_compute_system", system_id))
        self.documents[f"save:{system_id}"] = opts = json.loads(options)
        self._maybe_fail("save_compute_system", f"HcsSaveComputeSystem({system_id})")
        sys_ = self._system(system_id, "HcsSaveComputeSystem")
        if sys_["State"] != "Paused":
            raise error_for(HCS_E_INVALID_STATE, f"HcsSaveComputeSystem({system_id})",
                            json.dumps({"Error": "the compute system cannot be saved while it is running"}))
        path = Path(opts["SaveStateFilePath"])
        path.write_bytes(saved_state(hardware(self.documents[f"compute_system:{system_id}"])))
        path.chmod(0o600)

    def host_version(self) -> str:
        return self.version

    def close(self) -> None:
        """End every guest and remove the socket directory (tests' teardown)."""
        import shutil

        for system_id in list(self.guests):
            self._end_guest(system_id)
        if self.guest_init:
            shutil.rmtree(self.guest_dir, ignore_errors=True)

    def get_compute_system_properties(self, system_id: str, query: str, timeout: float) -> dict[str, Any]:
        self.calls.append(("get_compute_system_properties", system_id))
        sys_ = self._system(system_id, "HcsGetComputeSystemProperties")
        return {"Id": system_id, "SystemType": "VirtualMachine", "Owner": "microagent", **sys_}

    def ensure_network(self, network_id: str, document: str) -> None:
        self.calls.append(("ensure_network", network_id))
        self.documents[f"network:{network_id}"] = json.loads(document)
        self.networks.setdefault(network_id, json.loads(document))

    def create_endpoint(self, network_id: str, endpoint_id: str, document: str) -> dict[str, Any]:
        self.calls.append(("create_endpoint", network_id, endpoint_id))
        self.documents[f"endpoint:{endpoint_id}"] = json.loads(document)
        self._maybe_fail("create_endpoint", "HcnCreateEndpoint")
        ip = f"192.168.127.{self.next_ip}"
        self.next_ip += 1
        props = {**json.loads(document), "Id": endpoint_id,
                 "IpConfigurations": [{"IpAddress": ip, "PrefixLength": 24}],
                 "MacAddress": f"00-15-5D-00-00-{self.next_ip - 1:02X}"}
        self.endpoints[endpoint_id] = props
        return props

    def delete_endpoint(self, endpoint_id: str) -> None:
        self.calls.append(("delete_endpoint", endpoint_id))
        if endpoint_id not in self.endpoints:
            raise error_for(HCN_E_ENDPOINT_NOT_FOUND, f"HcnDeleteEndpoint({endpoint_id})")
        del self.endpoints[endpoint_id]

    def names(self) -> list[str]:
        """The method names called, in order, without property polls."""
        return [c[0] for c in self.calls if c[0] != "get_compute_system_properties"]


class FakeHelpers:
    """A recording stand-in for the helper launcher: 'spawning' makes the control socket appear."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready
        self.spawned: list[list[str]] = []
        self.killed: list[dict[str, Any]] = []
        self.live: set[int] = set()

    def spawn(self, argv: list[str], *, cwd: Any, log_path: Any) -> dict[str, Any]:
        self.spawned.append(argv)
        pid = 1000 + len(self.spawned)
        self.live.add(pid)
        if self.ready:
            (cwd / "control.sock").write_bytes(b"")
        return {"pid": pid, "starttime": 1}

    def alive(self, ref: dict[str, Any]) -> bool:
        return int(ref["pid"]) in self.live

    def kill(self, ref: dict[str, Any]) -> None:
        self.killed.append(ref)
        self.live.discard(int(ref["pid"]))


class FakeGuestHelpers(PosixHelpers):
    """The real helper process (``microagent.supervisors.hyperv.helper``), pointed at the fake's
    guest with ``--guest unix:…`` instead of a Hyper-V socket (which Linux lacks), without COM1."""

    def __init__(self, hcs: FakeHcs) -> None:
        self.hcs = hcs
        self.spawned: list[list[str]] = []

    def spawn(self, argv: list[str], *, cwd: Path, log_path: Path) -> dict[str, Any]:
        argv = list(argv)
        pipe = argv.index("--serial-pipe")
        del argv[pipe:pipe + 2]
        argv += ["--guest", f"unix:{self.hcs.guest_socket(argv[argv.index('--vm-id') + 1])}"]
        self.spawned.append(argv)
        return super().spawn(argv, cwd=cwd, log_path=log_path)
