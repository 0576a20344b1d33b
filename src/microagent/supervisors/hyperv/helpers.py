"""Starting and tracking the per-workspace helper process, on Windows and POSIX.

A helper is recorded in ``runtime.json`` as a small JSON object (``pid`` plus
an identity stamp) so a recycled PID never passes for our helper:

- POSIX: ``starttime`` from ``/proc/<pid>/stat`` (:mod:`microagent.host.process`);
- Windows: the process creation time from ``GetProcessTimes``.  Liveness is
  ``GetExitCodeProcess == STILL_ACTIVE`` and the kill is ``TerminateProcess``:
  ``os.kill`` is unusable for probing on Windows (any signal but CTRL_* *is*
  ``TerminateProcess``).
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from microagent.errors import Permanent


class HelperLauncher(Protocol):
    def spawn(self, argv: list[str], *, cwd: Path, log_path: Path) -> dict[str, Any]:
        """Start ``argv`` detached; returns its JSON-able reference."""

    def alive(self, ref: dict[str, Any]) -> bool: ...

    def kill(self, ref: dict[str, Any]) -> None: ...


class PosixHelpers:
    """Helpers as detached POSIX processes (also what tests here use)."""

    def spawn(self, argv: list[str], *, cwd: Path, log_path: Path) -> dict[str, Any]:
        from microagent.host import process

        proc = process.spawn_detached(argv, cwd=cwd, log_path=log_path)
        try:
            return process.ref_for(proc.pid).to_json()
        except Permanent:
            proc.wait()
            raise Permanent(f"the helper exited at once; see {log_path.name}") from None

    def alive(self, ref: dict[str, Any]) -> bool:
        from microagent.host import process

        return process.is_alive(process.ProcessRef(int(ref["pid"]), int(ref["starttime"])))

    def kill(self, ref: dict[str, Any]) -> None:
        from microagent.host import process

        pref = process.ProcessRef(int(ref["pid"]), int(ref["starttime"]))
        process.send_signal(pref, signal.SIGKILL)
        process.wait_gone(pref, 5.0)


class WindowsHelpers:  # pragma: no cover - needs Windows
    """Helpers as detached Windows processes, tracked through kernel32."""

    PROCESS_TERMINATE = 0x0001
    PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
    SYNCHRONIZE = 0x00100000
    STILL_ACTIVE = 259
    DETACHED_PROCESS = 0x00000008
    CREATE_NEW_PROCESS_GROUP = 0x00000200
    CREATE_NO_WINDOW = 0x08000000

    def __init__(self) -> None:
        self.k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]

    def _open(self, pid: int) -> Any:
        return self.k32.OpenProcess(self.PROCESS_TERMINATE | self.PROCESS_QUERY_LIMITED_INFORMATION
                                    | self.SYNCHRONIZE, False, pid)

    def _created(self, handle: Any) -> int | None:
        times = [ctypes.c_ulonglong() for _ in range(4)]
        if not self.k32.GetProcessTimes(handle, *(ctypes.byref(t) for t in times)):
            return None
        return times[0].value

    def spawn(self, argv: list[str], *, cwd: Path, log_path: Path) -> dict[str, Any]:
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        creationflags=self.DETACHED_PROCESS | self.CREATE_NEW_PROCESS_GROUP
                                        | self.CREATE_NO_WINDOW, close_fds=True)
            except OSError as exc:
                raise Permanent(f"cannot start the helper: {exc}") from exc
        handle = self._open(proc.pid)
        try:
            created = self._created(handle) if handle else None
        finally:
            if handle:
                self.k32.CloseHandle(handle)
        if created is None:
            raise Permanent(f"the helper exited at once; see {log_path.name}")
        return {"pid": proc.pid, "created": created}

    def alive(self, ref: dict[str, Any]) -> bool:
        handle = self._open(int(ref["pid"]))
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            if not self.k32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value != self.STILL_ACTIVE:
                return False
            return self._created(handle) == int(ref.get("created", -1))
        finally:
            self.k32.CloseHandle(handle)

    def kill(self, ref: dict[str, Any]) -> None:
        if not self.alive(ref):
            return
        handle = self._open(int(ref["pid"]))
        if handle:
            try:
                self.k32.TerminateProcess(handle, 1)
                self.k32.WaitForSingleObject(handle, 5000)
            finally:
                self.k32.CloseHandle(handle)


def default_launcher() -> HelperLauncher:
    return WindowsHelpers() if sys.platform == "win32" else PosixHelpers()
