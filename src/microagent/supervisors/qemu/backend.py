"""The QEMU backend: boot, watch and tear down ``qemu-system-*`` microVMs.

Process model (DESIGN.md §1): the supervisor records the QEMU PID (with its
start time) in ``runtime.json``; ``stop`` = SIGTERM then ``failed`` if QEMU
survives the grace period, ``kill`` = SIGKILL, ``halt`` = clean power-off
through guest init, ``quarantine`` = sever host paths and keep the process.
Readiness means the guest init answered the channel ``HELLO``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from microagent.errors import (
    Conflict,
    MicroagentError,
    NotFound,
    Permanent,
    PolicyDenied,
    Transient,
)
from microagent.supervisors import process
from microagent.supervisors.base import Backend
from microagent.supervisors.linux_host import check_files, host_document, require_linux
from microagent.supervisors.qemu.argv import qemu_argv
from microagent.supervisors.runtime_state import RuntimeDir
from microagent.vmkit.types import Event, Request, Response, now_rfc3339, to_wire

STOP_GRACE_S = 5.0
HALT_TIMEOUT_S = 15.0
LIVE_STATES = ("starting", "running", "quarantined", "paused", "stopping")


def _runtime_dir(request: Request) -> RuntimeDir:
    assert request.config is not None and request.identity is not None
    return RuntimeDir(Path(request.config.stateDir) / request.identity.runtimeID)


def _process_ref(runtime: dict[str, Any] | None) -> process.ProcessRef | None:
    if not runtime or "pid" not in runtime or "starttime" not in runtime:
        return None
    return process.ProcessRef(int(runtime["pid"]), int(runtime["starttime"]))


class QemuBackend(Backend):
    name = "qemu"

    # --- host & check ---------------------------------------------------------

    def _accel(self, kvm_kind: str) -> str:
        return "kvm" if kvm_kind == "hardware" else "tcg"

    def host(self, request: Request) -> Response:
        facts = require_linux(self.name)
        doc = host_document(self.name, facts.tools["qemu"], facts, vsock=True,
                            accel=self._accel(facts.kvm.kind))
        return Response(ok=True, backend=self.name, host=doc)

    def _check(self, request: Request) -> tuple[str, str]:
        facts = require_linux(self.name)
        qemu = facts.tools["qemu"]
        if not qemu.available:
            raise PolicyDenied(f"qemu is not installed: {qemu.error}",
                               "apt-get install qemu-system-x86 (or run 'make install')")
        check_files(request)
        return qemu.path, self._accel(facts.kvm.kind)

    def check(self, request: Request) -> Response:
        self._check(request)
        return self.event(request, "unknown", "check passed")

    # --- state helpers --------------------------------------------------------

    def _record(self, rt: RuntimeDir, request: Request, state: str, detail: str = "") -> Event:
        assert request.identity is not None
        event = Event(identity=request.identity, state=state, detail=detail)
        rt.record_event(event)
        runtime = rt.runtime() or {}
        runtime["state"] = state
        runtime["updatedAt"] = event.observedAt
        rt.write_runtime(runtime)
        return event

    def _live_ref(self, rt: RuntimeDir) -> process.ProcessRef | None:
        ref = _process_ref(rt.runtime())
        if ref is not None and process.is_alive(ref):
            return ref
        return None

    def _recorded_state(self, rt: RuntimeDir) -> str:
        runtime = rt.runtime()
        return str(runtime.get("state", "unknown")) if runtime else "unknown"

    # --- boot -----------------------------------------------------------------

    def prepare(self, request: Request) -> Response:
        self._check(request)
        rt = _runtime_dir(request)
        if self._live_ref(rt) is not None:
            raise Conflict(f"workspace {request.identity.runtimeID} is running; stop it first")  # type: ignore[union-attr]
        rt.create()
        rt.write_runtime({"backend": self.name, "config": to_wire(request.config), "state": "prepared"})
        return Response(ok=True, backend=self.name, event=self._record(rt, request, "prepared"))

    def _boot(self, request: Request) -> tuple[RuntimeDir, process.ProcessRef]:
        """Start QEMU and wait until guest init answers on the channel.

        :raises Conflict: when the workspace already runs.
        :raises Transient: when the guest does not come up in time (VM killed).
        """
        binary, accel = self._check(request)
        cfg = request.config
        ident = request.identity
        assert cfg is not None and ident is not None
        rt = _runtime_dir(request)
        live = self._live_ref(rt)
        if live is not None:
            raise Conflict(f"workspace {ident.runtimeID} is already running (qemu pid {live.pid})",
                           "stop, kill or halt it first")
        rt.create()
        for stale in ("channel.sock", "qmp.sock", "qemu.pid"):
            (rt.path / stale).unlink(missing_ok=True)
        hostname = cfg.hostname or ident.runtimeID
        argv = qemu_argv(binary, cfg, hostname=hostname, accel=accel)
        with open(rt.serial_log, "ab") as log:
            log.write(f"\n[microagent] boot {now_rfc3339()} accel={accel}\n".encode())
        started = time.monotonic()
        proc = process.spawn_detached(argv, cwd=rt.path, log_path=rt.vmm_log)
        try:
            ref = process.ref_for(proc.pid)
        except Permanent:
            proc.wait()
            raise Permanent(f"qemu exited at once: {self._vmm_log_tail(rt)}",
                            "see vmm.log in the runtime directory") from None
        rt.write_runtime({
            "backend": self.name, "pid": ref.pid, "starttime": ref.starttime, "accel": accel,
            "argv": argv, "config": to_wire(cfg), "startedAt": now_rfc3339(), "state": "starting",
            "serialLogPath": str(rt.serial_log), "channelSocket": str(rt.channel_socket),
            "qmpSocket": str(rt.path / "qmp.sock"),
        })
        self._record(rt, request, "starting", f"serial={rt.serial_log}")
        deadline = started + cfg.timeoutSeconds
        try:
            self._wait_guest(rt, proc, deadline)
        except MicroagentError as exc:
            self._kill_quietly(proc)
            self._record(rt, request, "failed", exc.message)
            raise
        runtime = rt.runtime() or {}
        runtime["bootSeconds"] = round(time.monotonic() - started, 3)
        rt.write_runtime(runtime)
        return rt, ref

    def _vmm_log_tail(self, rt: RuntimeDir) -> str:
        try:
            return " | ".join(rt.vmm_log.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return ""

    def _kill_quietly(self, proc: Any) -> None:
        try:
            proc.kill()
            proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - best effort teardown on a failure path
            pass

    def _wait_guest(self, rt: RuntimeDir, proc: Any, deadline: float) -> None:
        """Connect the channel and complete HELLO before ``deadline``."""
        from microagent.channel import open_channel

        while not rt.channel_socket.exists():
            if proc.poll() is not None:
                raise Permanent(f"qemu exited with status {proc.returncode} during boot: "
                                f"{self._vmm_log_tail(rt)}", "see vmm.log and serial.log")
            if time.monotonic() > deadline:
                raise Transient("qemu did not create its channel socket in time")
            time.sleep(0.01)
        try:
            conn = open_channel(rt.channel_socket, hello_timeout=max(0.1, deadline - time.monotonic()))
        except MicroagentError as exc:
            status = proc.poll()
            tail = rt.serial_tail()
            if status is not None:
                raise Permanent(f"the VM exited with status {status} before guest init answered; "
                                f"serial log tail:\n{tail}", "see serial.log") from exc
            raise Transient(f"guest init did not answer within the boot timeout; serial log tail:\n{tail}",
                            "raise --timeout or check the kernel and initramfs") from exc
        conn.close()

    def start(self, request: Request) -> Response:
        rt, ref = self._boot(request)
        event = self._record(rt, request, "running", f"serial={rt.serial_log}")
        ready = {"ready": True, "observedAt": event.observedAt}
        return Response(ok=True, backend=self.name, event=event,
                        readiness={"guestReady": ready, "execReady": ready, "shellReady": ready},
                        runtime={"pid": ref.pid, "bootSeconds": (rt.runtime() or {}).get("bootSeconds")})

    def run(self, request: Request) -> Response:
        """Foreground: boot, run ``request.exec``, power off, return the result."""
        from microagent.channel import ExecRequest, open_channel

        if request.exec is None:
            raise Permanent("run needs an exec section naming the command to run")
        rt, ref = self._boot(request)
        self._record(rt, request, "running", f"serial={rt.serial_log}")
        spec = request.exec
        try:
            with open_channel(rt.channel_socket, hello_timeout=10.0) as conn:
                result = conn.exec(ExecRequest(argv=list(spec.argv), env=list(spec.env),
                                               cwd=spec.cwd or None, user=spec.user or None,
                                               timeout_s=spec.timeoutSeconds or None))
                conn.shutdown("poweroff", grace_s=2.0)
        except MicroagentError as exc:
            process.send_signal(ref, signal.SIGKILL)
            process.wait_gone(ref, 10)
            self._record(rt, request, "failed", exc.message)
            raise
        result_doc = result.to_dict()
        from microagent.supervisors.runtime_state import write_json_atomic

        write_json_atomic(rt.result_json, result_doc)
        if not process.wait_gone(ref, HALT_TIMEOUT_S):
            process.send_signal(ref, signal.SIGKILL)
            process.wait_gone(ref, 10)
        event = self._record(rt, request, "stopped", "powered_off")
        return Response(ok=True, backend=self.name, event=event, result=result_doc)

    # --- lifecycle -------------------------------------------------------------

    def inspect(self, request: Request) -> Response:
        """Recorded state reconciled with the process table."""
        rt = _runtime_dir(request)
        runtime = rt.runtime()
        if runtime is None:
            raise NotFound(f"workspace {request.identity.runtimeID} has no runtime state",  # type: ignore[union-attr]
                           "create or start it first")
        state = str(runtime.get("state", "unknown"))
        ref = _process_ref(runtime)
        alive = ref is not None and process.is_alive(ref)
        if state in LIVE_STATES and not alive:
            event = self._record(rt, request, "failed",
                                 f"qemu (pid {ref.pid if ref else '?'}) exited while nobody watched; "
                                 f"serial tail: {rt.serial_tail(3)}")
        else:
            assert request.identity is not None
            event = Event(identity=request.identity, state=state,
                          detail=f"serial={rt.serial_log}")
        return Response(ok=True, backend=self.name, event=event,
                        runtime={"pid": ref.pid if ref else None, "alive": alive,
                                 "serialLogPath": str(rt.serial_log),
                                 "channelSocket": str(rt.channel_socket)})

    def _require_live(self, request: Request, verb: str) -> tuple[RuntimeDir, process.ProcessRef]:
        rt = _runtime_dir(request)
        ref = self._live_ref(rt)
        if ref is None:
            raise Conflict(f"workspace {request.identity.runtimeID} is not running "  # type: ignore[union-attr]
                           f"(state {self._recorded_state(rt)}); nothing to {verb}")
        return rt, ref

    def halt(self, request: Request) -> Response:
        from microagent.channel import open_channel

        rt, ref = self._require_live(request, "halt")
        if self._recorded_state(rt) == "quarantined":
            raise Conflict(f"workspace {request.identity.runtimeID} is quarantined; "  # type: ignore[union-attr]
                           "its channel is severed", "use stop or kill")
        try:
            with open_channel(rt.channel_socket, hello_timeout=5.0) as conn:
                conn.shutdown("poweroff", grace_s=5.0)
        except MicroagentError as exc:
            event = self._record(rt, request, "failed", f"halt could not reach guest init: {exc.message}")
            raise Transient(f"halt could not reach guest init: {exc.message}; the VM is still running "
                            f"(pid {ref.pid})", "use stop or kill") from exc
        if not process.wait_gone(ref, HALT_TIMEOUT_S):
            self._record(rt, request, "failed", f"guest did not power off within {HALT_TIMEOUT_S:.0f}s")
            raise Transient(f"guest did not power off within {HALT_TIMEOUT_S:.0f}s; qemu (pid {ref.pid}) "
                            "was left running", "use stop or kill")
        self._cleanup_sockets(rt)
        return Response(ok=True, backend=self.name, event=self._record(rt, request, "halted", "guest powered off"))

    def stop(self, request: Request) -> Response:
        rt, ref = self._require_live(request, "stop")
        process.send_signal(ref, signal.SIGTERM)
        if not process.wait_gone(ref, STOP_GRACE_S):
            self._record(rt, request, "failed", f"qemu survived SIGTERM for {STOP_GRACE_S:.0f}s")
            raise Transient(f"qemu (pid {ref.pid}) is still alive {STOP_GRACE_S:.0f}s after SIGTERM",
                            "use kill")
        self._cleanup_sockets(rt)
        return Response(ok=True, backend=self.name, event=self._record(rt, request, "stopped", "SIGTERM"))

    def kill(self, request: Request) -> Response:
        rt, ref = self._require_live(request, "kill")
        process.send_signal(ref, signal.SIGKILL)
        if not process.wait_gone(ref, 10.0):
            raise Transient(f"qemu (pid {ref.pid}) survived SIGKILL", "check the process table")
        self._cleanup_sockets(rt)
        return Response(ok=True, backend=self.name, event=self._record(rt, request, "stopped", "SIGKILL"))

    def quarantine(self, request: Request) -> Response:
        """Sever every host path into the guest; keep the QEMU process and PID."""
        rt, ref = self._require_live(request, "quarantine")
        severed = []
        if rt.channel_socket.exists():
            rt.channel_socket.unlink()
            severed.append("channel")
        event = self._record(rt, request, "quarantined",
                             f"severed: {', '.join(severed) or 'nothing left'}; pid {ref.pid} kept")
        return Response(ok=True, backend=self.name, event=event, runtime={"pid": ref.pid, "alive": True})

    def delete(self, request: Request) -> Response:
        rt = _runtime_dir(request)
        ref = self._live_ref(rt)
        if ref is not None:
            raise Conflict(f"workspace {request.identity.runtimeID} is running (qemu pid {ref.pid}); "  # type: ignore[union-attr]
                           "stop or kill it before delete", "use kill, or delete -f")
        assert request.config is not None and request.identity is not None
        existed = rt.path.exists()
        shutil.rmtree(rt.path, ignore_errors=True)
        ws = Path(request.config.stateDir) / "workspaces" / request.identity.runtimeID
        existed = existed or ws.exists()
        shutil.rmtree(ws, ignore_errors=True)
        event = Event(identity=request.identity, state="unknown", detail="deleted" if existed else "absent")
        return Response(ok=True, backend=self.name, event=event)

    def _cleanup_sockets(self, rt: RuntimeDir) -> None:
        for name in ("channel.sock", "qmp.sock", "qemu.pid"):
            try:
                os.unlink(rt.path / name)
            except FileNotFoundError:
                pass

