"""FakeHcs: a recording stand-in for HCS/HCN (NOT the real API).

Implements :class:`microagent.supervisors.hyperv.hcs.HcsApi` in memory.
Every call is appended to ``calls`` as ``(method, args...)`` and every JSON
document handed over is kept (parsed) in ``documents``, so tests assert the
exact sequence and content the real API would have received.  Compute
systems move through HCS's states (``Created`` → ``Running`` → ``Stopped``
then disappear); knobs simulate a guest that ignores shutdown and HRESULT
failures.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from microagent.supervisors.hyperv.hcs import (
    HCS_E_INVALID_STATE,
    HCS_E_SYSTEM_ALREADY_EXISTS,
    HCS_E_SYSTEM_NOT_FOUND,
    HCN_E_ENDPOINT_NOT_FOUND,
    error_for,
)


class FakeHcs:
    def __init__(self) -> None:
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
        self.systems[system_id] = {"State": "Created", "RuntimeId": str(uuid.uuid4())}

    def start_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("start_compute_system", system_id))
        self._maybe_fail("start_compute_system", f"HcsStartComputeSystem({system_id})")
        self._system(system_id, "HcsStartComputeSystem")["State"] = "Running"

    def shutdown_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("shutdown_compute_system", system_id))
        self._maybe_fail("shutdown_compute_system", f"HcsShutdownComputeSystem({system_id})")
        self._system(system_id, "HcsShutdownComputeSystem")
        if not self.ignore_shutdown:
            del self.systems[system_id]

    def terminate_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("terminate_compute_system", system_id))
        self._maybe_fail("terminate_compute_system", f"HcsTerminateComputeSystem({system_id})")
        self._system(system_id, "HcsTerminateComputeSystem")
        del self.systems[system_id]

    def pause_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("pause_compute_system", system_id))
        sys_ = self._system(system_id, "HcsPauseComputeSystem")
        if sys_["State"] != "Running":
            raise error_for(HCS_E_INVALID_STATE, "HcsPauseComputeSystem")
        sys_["State"] = "Paused"

    def resume_compute_system(self, system_id: str, timeout: float) -> None:
        self.calls.append(("resume_compute_system", system_id))
        self._system(system_id, "HcsResumeComputeSystem")["State"] = "Running"

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
