"""A Hyper-V compute system and the helper process, as the shared lifecycle sees them.

HCS runs the VM with no host process of ours, so the compute system ID plays
the PID's role: "alive" means HCS reports the ID in state ``Created``,
``Running`` or ``Paused``; ``HCS_E_SYSTEM_NOT_FOUND`` or ``Stopped`` means
gone.  IDs are never reused for another VM while one exists
(``HCS_E_SYSTEM_ALREADY_EXISTS``), which is what the PID start time buys on Linux.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from microagent.errors import Conflict, NotFound
from microagent.supervisors.hyperv.hcs import HcsApi
from microagent.supervisors.hyperv.helpers import HelperLauncher
from microagent.waiting import wait_until

HCS_TIMEOUT_S = 60.0
POLL_S = 0.05
LIVE_HCS_STATES = ("Created", "Running", "Paused")


@dataclass
class ComputeSystemHandle:
    """:class:`~microagent.supervisors.handle.VMHandle` of a compute system."""

    hcs: HcsApi
    system_id: str
    #: the Hyper-V socket VmId (HCS's ``RuntimeId``), once started
    vm_id: str | None = None
    stop_call = "HcsShutdownComputeSystem"
    kill_call = "HcsTerminateComputeSystem"

    @property
    def ident(self) -> str:
        return f"compute system {self.system_id}"

    @property
    def label(self) -> str:
        return self.ident

    def hcs_state(self) -> str:
        """HCS's ``State`` of the system; ``"Absent"`` when HCS does not know it."""
        try:
            props = self.hcs.get_compute_system_properties(self.system_id, "", HCS_TIMEOUT_S)
        except NotFound:
            return "Absent"
        return str(props.get("State", "Unknown"))

    def alive(self) -> bool:
        return self.hcs_state() in LIVE_HCS_STATES

    def stop(self, grace: float) -> None:
        """The guest's shutdown integration component (``hv_utils``): the SIGTERM analogue."""
        self.hcs.shutdown_compute_system(self.system_id, grace)

    def kill(self) -> None:
        try:
            self.hcs.terminate_compute_system(self.system_id, HCS_TIMEOUT_S)
        except (NotFound, Conflict):
            pass  # stopped on its own meanwhile

    def wait_gone(self, timeout: float) -> bool:
        return wait_until(lambda: not self.alive(), timeout, POLL_S) is not None

    def pause(self) -> None:
        self.hcs.pause_compute_system(self.system_id, HCS_TIMEOUT_S)

    def resume(self) -> None:
        self.hcs.resume_compute_system(self.system_id, HCS_TIMEOUT_S)

    def gone_detail(self, was: str) -> str:
        return f"{self.label} is {self.hcs_state()} but was {was}"

    def exit_detail(self) -> str:
        return f"{self.label} stopped"

    def ids(self) -> dict[str, Any]:
        return {"systemId": self.system_id, "vmId": self.vm_id}


@dataclass(frozen=True)
class LaunchedHelper:
    """:class:`~microagent.supervisors.handle.HelperHandle` of the helper a launcher started."""

    launcher: HelperLauncher
    ref: dict[str, Any]

    @property
    def pid(self) -> int:
        return int(self.ref["pid"])

    def alive(self) -> bool:
        return self.launcher.alive(self.ref)

    def kill(self) -> None:
        self.launcher.kill(self.ref)
