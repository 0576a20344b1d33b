"""What the shared lifecycle (:mod:`.vmm`) holds on to: a running VM and its channel helper.

A backend names its VM by what outlives the supervisor invocation that
started it: a process reference (pid and start time, so a recycled PID never
passes for ours) for QEMU, Firecracker and Apple VF's vmhost, a compute-system
ID for Hyper-V.  The lifecycle only ever talks to a :class:`VMHandle`.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any, Callable, Protocol

from msgspec import Struct

from microagent.host import process


class VMHandle(Protocol):
    """A VM the lifecycle can observe and end.

    ``ident`` is how it is known (``pid 12``, ``compute system X``), ``label``
    names it in messages (``qemu (pid 12)``, ``compute system X``);
    ``stop_call``/``kill_call`` name the polite and the forced stop
    (``SIGTERM``/``SIGKILL``, ``HcsShutdownComputeSystem``/``HcsTerminateComputeSystem``).
    """

    ident: str
    label: str
    stop_call: str
    kill_call: str

    def alive(self) -> bool: ...

    def stop(self, grace: float) -> None:
        """Ask the VM to go (the guest may shut down cleanly); does not wait."""

    def kill(self) -> None:
        """End the VM now; does not wait."""

    def wait_gone(self, timeout: float) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def gone_detail(self, was: str) -> str:
        """What to record when the VM vanished while the record said ``was``."""

    def exit_detail(self) -> str:
        """How the VM ended, for a boot it did not survive."""

    def ids(self) -> dict[str, Any]:
        """How answers name it (``{"pid": N}``, ``{"systemId": X}``)."""


class ProcessHandle(Struct):
    """A VM that is a host process of ours (the VMM, or the vmhost that owns the VM)."""

    name: str
    ref: process.ProcessRef
    #: pause and continue the vcpus (through the VMM's own API)
    pause_vm: Callable[[], None]
    resume_vm: Callable[[], None]
    #: the Popen of the boot that spawned it: its exit status, and no zombie to mistake for alive
    proc: subprocess.Popen[bytes] | None = None
    stop_call = "SIGTERM"
    kill_call = "SIGKILL"

    @property
    def ident(self) -> str:
        return f"pid {self.ref.pid}"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.ident})"

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        return process.is_alive(self.ref)

    def stop(self, grace: float) -> None:
        process.send_signal(self.ref, signal.SIGTERM)

    def kill(self) -> None:
        process.send_signal(self.ref, signal.SIGKILL)

    def wait_gone(self, timeout: float) -> bool:
        return process.wait_gone(self.ref, timeout)

    def pause(self) -> None:
        self.pause_vm()

    def resume(self) -> None:
        self.resume_vm()

    def gone_detail(self, was: str) -> str:
        return f"{self.label} exited while nobody watched"

    def exit_detail(self) -> str:
        status = self.proc.poll() if self.proc is not None else None
        return "the VM exited" + (f" with status {status}" if status is not None else "")

    def ids(self) -> dict[str, Any]:
        return {"pid": self.ref.pid}


class HelperHandle(Protocol):
    """The per-workspace channel helper (a host process on every backend)."""

    pid: int

    def alive(self) -> bool: ...

    def kill(self) -> None:
        """End it and wait until it is gone."""


class ProcessHelper(Struct, frozen=True):
    ref: process.ProcessRef

    @property
    def pid(self) -> int:
        return self.ref.pid

    def alive(self) -> bool:
        return process.is_alive(self.ref)

    def kill(self) -> None:
        process.send_signal(self.ref, signal.SIGKILL)
        process.wait_gone(self.ref, 5)
