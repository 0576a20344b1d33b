"""The lifecycle every Linux VMM backend shares (qemu, firecracker).

A backend supplies how to check the host, spawn its VMM, and reach the
guest channel; this module owns the process model (docs/supervisor-api.md,
"Process model"; the processes: docs/architecture.md, "Per-workspace processes"):

- ``start``: spawn the VMM (recording PID and start time), spawn the channel
  helper (:mod:`microagent.channel.router`) and wait until it has the guest's
  ``HELLO``; a boot timeout kills both and reports the serial tail.  With
  ``config.readiness = "vmm"`` start returns as soon as the VMM is up and its
  API answers: state ``starting``, ``guestReady`` false; the helper keeps
  trying the guest until the boot timeout and a later ``inspect`` promotes
  the workspace to ``running`` if the guest answered.
- ``halt``: power-off through guest init; ``halted`` or ``failed`` (VMM kept).
- ``stop``: SIGTERM, grace, ``stopped`` or ``failed`` (no silent escalation).
- ``kill``: SIGKILL, ``stopped``.
- ``quarantine``: kill the helper, unlink every socket into the guest, keep
  the VMM process and its PID, ``quarantined``.
- ``delete``: refused while the VMM lives.
- ``inspect``: the recorded state reconciled with the process table and
  with what the VMM itself says (a VM it paused on its own, e.g. for a full
  host disk, reads ``paused`` with the reason); a running workspace whose
  helper died gets a new helper.
- ``pause``/``resume``: stop and continue the vcpus; resume also continues a
  VM the VMM paused for lack of disk space, once there is space again.

State records on the way down (kill, stop, halt, delete, reconciliation)
are best effort on a full disk (:mod:`microagent.runtime_state`): those
commands must work exactly when the disk is full.
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import microagent.serial_log as serial_log
from microagent.errors import Conflict, MicroagentError, NotFound, Permanent, Transient
from microagent.host import process
from microagent.paths import require_private_root, workspace_dir
from microagent.supervisors import netattach
from microagent.supervisors.base import Backend
from microagent.channel.vm_events import paused_detail
from microagent.runtime_state import RuntimeDir, locate_runtime_dir, write_json_atomic
from microagent.vmkit.types import Config, Event, Request, Response, now_rfc3339, to_wire

STOP_GRACE_S = 5.0
HALT_TIMEOUT_S = 15.0
HALT_GRACE_S = 5.0
LIVE_STATES = ("starting", "running", "quarantined", "paused", "stopping")


def runtime_dir_for(request: Request) -> RuntimeDir:
    """``<stateDir>/run/<name>`` (an earlier layout's directory moved there when at rest).

    :raises PolicyDenied: when another user owns or can write to the state directory.
    """
    assert request.config is not None and request.identity is not None
    root = require_private_root(Path(request.config.stateDir))
    return RuntimeDir(locate_runtime_dir(root, request.identity.runtimeID))


def _ref(runtime: dict[str, Any] | None, pid_key: str = "pid",
         start_key: str = "starttime") -> process.ProcessRef | None:
    """The process recorded under ``pid_key``/``start_key`` in runtime.json."""
    if not runtime or runtime.get(pid_key) is None or runtime.get(start_key) is None:
        return None
    return process.ProcessRef(int(runtime[pid_key]), int(runtime[start_key]))


class VMMBackend(Backend):
    """Shared lifecycle; subclasses fill in the VMM-specific hooks."""

    #: sockets/files in the runtime dir that belong to one boot
    boot_files: tuple[str, ...] = ()

    # --- hooks ---------------------------------------------------------------

    def preflight(self, request: Request) -> dict[str, Any]:
        """Check the host and the request's files; returns what ``spawn`` needs."""
        raise NotImplementedError

    def spawn(self, request: Request, rt: RuntimeDir, ctx: dict[str, Any]) -> tuple[subprocess.Popen[bytes], list[str]]:
        """Start the VMM (detached, cwd = runtime dir)."""
        raise NotImplementedError

    def after_spawn(self, request: Request, rt: RuntimeDir, proc: subprocess.Popen[bytes]) -> None:
        """Configure/boot through the VMM's API when it needs that (firecracker)."""

    def guest_spec(self, rt: RuntimeDir) -> str:
        """The router's ``--guest`` argument."""
        raise NotImplementedError

    def sever(self, rt: RuntimeDir) -> list[str]:
        """Backend-specific host paths to cut on quarantine; returns their names."""
        return []

    def user_provider(self) -> str:
        """What ``--network user`` is on this backend: ``slirp`` (inside the VMM) or ``pasta``."""
        return "slirp"

    def attach_network(self, cfg: Config, rt: RuntimeDir, name: str) -> netattach.Attachment:
        """Host-side networking before the VMM exists: published ports bound, NAT TAP and
        rules, or pasta's namespace."""
        return netattach.attach(cfg, rt, name, self.user_provider())

    def guest_network(self, attachment: netattach.Attachment, name: str) -> dict[str, Any]:
        """The ``network`` object of the per-boot config (the guest's addressing)."""
        return attachment.plan.guest_config()

    def detach_network(self, rt: RuntimeDir, name: str) -> list[str]:
        """Undo :meth:`attach_network` (published listeners close with the helper)."""
        return netattach.detach(rt, name)

    def pause_vm(self, rt: RuntimeDir) -> None:
        raise self._unsupported("pause")

    def resume_vm(self, rt: RuntimeDir) -> None:
        raise self._unsupported("resume")

    def vmm_status(self, rt: RuntimeDir) -> dict[str, Any] | None:
        """What the live VMM itself reports (best effort; ``inspect`` shows it)."""
        return None

    def run_status(self, rt: RuntimeDir) -> dict[str, Any] | None:
        """``{"running": bool, "reason": str | None}`` from the live VMM, ``reason`` saying
        why it paused the VM on its own (``"host disk full"``); ``None`` when it cannot tell."""
        return None

    def router_args(self, rt: RuntimeDir) -> list[str]:
        """Extra arguments for the channel helper (e.g. where to follow VM pauses)."""
        return []

    def guest_unready_reason(self) -> str:
        """Why the guest may never answer on this host ('' when it should)."""
        return ""

    # --- state helpers ---------------------------------------------------------

    def record(self, rt: RuntimeDir, request: Request, state: str, detail: str = "", *,
               best_effort: bool = True, **runtime_updates: Any) -> Event:
        """Record a state; on a full disk skipped unless ``best_effort`` is false."""
        assert request.identity is not None
        return rt.record(request.identity, state, detail, best_effort=best_effort, **runtime_updates)

    def live_vmm(self, rt: RuntimeDir) -> process.ProcessRef | None:
        ref = _ref(rt.runtime())
        return ref if ref is not None and process.is_alive(ref) else None

    def live_router(self, rt: RuntimeDir) -> process.ProcessRef | None:
        ref = _ref(rt.runtime(), "routerPid", "routerStarttime")
        return ref if ref is not None and process.is_alive(ref) else None

    def recorded_state(self, rt: RuntimeDir) -> str:
        runtime = rt.runtime()
        return str(runtime.get("state", "unknown")) if runtime else "unknown"

    def _name(self, request: Request) -> str:
        assert request.identity is not None
        return request.identity.runtimeID

    def _vmm_log_tail(self, rt: RuntimeDir) -> str:
        try:
            return " | ".join(rt.vmm_log.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return ""

    def _early_exit_tails(self, rt: RuntimeDir) -> str:
        """What a VMM that died before the guest answered left: its own log, then the console."""
        vmm = self._vmm_log_tail(rt)
        serial = rt.serial_tail()
        return ((f"\n{self.name} said: {vmm}" if vmm else f"\n{self.name} wrote nothing to vmm.log")
                + (f"\nserial log tail:\n{serial}" if serial.strip() else "\nthe serial log is empty"))

    # --- commands --------------------------------------------------------------

    def check(self, request: Request) -> Response:
        self.preflight(request)
        return self.event(request, "unknown", "check passed")

    def prepare(self, request: Request) -> Response:
        self.preflight(request)
        rt = runtime_dir_for(request)
        if self.live_vmm(rt) is not None:
            raise Conflict(f"workspace {self._name(request)} is running; stop it first")
        rt.create()
        event = self.record(rt, request, "prepared", backend=self.name, config=to_wire(request.config))
        return Response(ok=True, backend=self.name, event=event)

    def _spawn_router(self, rt: RuntimeDir, hello_timeout: float,
                      listeners: list[tuple[socket.socket, int]] | None = None) -> process.ProcessRef:
        """The channel helper; it inherits the published ports' listening sockets."""
        argv = [sys.executable, "-m", "microagent.channel.router", "--guest", self.guest_spec(rt),
                "--listen", str(rt.control_socket), "--hello-timeout", f"{max(hello_timeout, 0.1):.3f}",
                "--serial-log", str(rt.serial_log), "--serial-log-max-bytes", str(serial_log.cap_bytes()),
                *self.router_args(rt)]
        for sock, guest_port in listeners or []:
            argv += ["--publish", f"{sock.fileno()}:{guest_port}"]
        proc = process.spawn_detached(argv, cwd=rt.path, log_path=rt.path / "router.log",
                                      pass_fds=tuple(sock.fileno() for sock, _ in listeners or []))
        try:
            ref = process.ref_for(proc.pid)
        except Permanent:
            proc.wait()
            raise Permanent("the channel helper exited at once; see router.log") from None
        runtime = rt.runtime() or {}
        runtime.update(routerPid=ref.pid, routerStarttime=ref.starttime)
        rt.write_runtime(runtime)
        return ref

    def _boot(self, request: Request) -> tuple[RuntimeDir, process.ProcessRef, bool]:
        """Spawn the VMM and (readiness ``guest``) wait for guest init.

        :returns: the runtime dir, the VMM, and whether the guest answered.
        """
        ctx = self.preflight(request)
        cfg, name = request.config, self._name(request)
        assert cfg is not None
        rt = runtime_dir_for(request)
        if self.recorded_state(rt) == "quarantined":
            raise Conflict(f"workspace {name} is quarantined", "stop or kill it before starting it again")
        live = self.live_vmm(rt)
        if live is not None:
            raise Conflict(f"workspace {name} is already running ({self.name} pid {live.pid})",
                           "stop, kill or halt it first")
        rt.create()
        for stale in (*self.boot_files, "control.sock"):
            (rt.path / stale).unlink(missing_ok=True)
        attachment = self.attach_network(cfg, rt, name)  # ports bound, TAP up: before the VMM exists
        try:
            ctx["network"] = attachment.plan
            if not cfg.configDiskPath:
                disk = netattach.write_config_disk(rt, cfg.hostname or name,
                                                   self.guest_network(attachment, name), cfg.env)
                cfg = dataclasses.replace(cfg, configDiskPath=str(disk))
                request = dataclasses.replace(request, config=cfg)
            serial_log.start_new_boot(rt.serial_log, f"[microagent] boot {now_rfc3339()} backend={self.name}\n")
            started = time.monotonic()
            deadline = started + cfg.timeoutSeconds
            proc, argv = self.spawn(request, rt, ctx)
        except BaseException:
            attachment.close_listeners()
            self.detach_network(rt, name)
            raise
        try:
            ref = process.ref_for(proc.pid)
        except Permanent:
            proc.wait()
            attachment.close_listeners()
            self.detach_network(rt, name)
            raise Permanent(f"{self.name} exited at once: {self._vmm_log_tail(rt)}",
                            "see vmm.log in the runtime directory") from None
        self.record(rt, request, "starting", f"serial={rt.serial_log}", backend=self.name,
                    pid=ref.pid, starttime=ref.starttime, argv=argv, config=to_wire(cfg),
                    startedAt=now_rfc3339(), serialLogPath=str(rt.serial_log),
                    controlSocket=str(rt.control_socket), routerPid=None, routerStarttime=None,
                    readiness=cfg.readiness, bootSeconds=None, pausedFrom=None, pausedReason=None,
                    best_effort=False)
        try:
            self.after_spawn(request, rt, proc)
            if cfg.readiness == "vmm":
                # Do not wait for the guest: the helper keeps trying until the boot timeout.
                self._spawn_router(rt, cfg.timeoutSeconds, attachment.listeners)
            else:
                router = self._spawn_router(rt, deadline - time.monotonic(), attachment.listeners)
                self._wait_ready(rt, proc, router, deadline)
        except BaseException as exc:
            attachment.close_listeners()
            self._teardown(rt, kill_vmm=True)
            message = exc.message if isinstance(exc, MicroagentError) else str(exc)
            self.record(rt, request, "failed", message)
            raise
        attachment.close_listeners()  # the helper holds them now
        if cfg.readiness == "vmm":
            self.record(rt, request, "starting", self._vmm_only_detail(ref),
                        vmmSeconds=round(time.monotonic() - started, 3))
            return rt, ref, False
        self.record(rt, request, "running", f"serial={rt.serial_log}",
                    bootSeconds=round(time.monotonic() - started, 3))
        return rt, ref, True

    def _vmm_only_detail(self, ref: process.ProcessRef, router_alive: bool = True) -> str:
        why = self.guest_unready_reason()
        waiting = ("the channel helper is waiting for guest init" if router_alive
                   else "guest init did not answer within the boot timeout")
        return (f"readiness=vmm: {self.name} (pid {ref.pid}) is up and its API answers; {waiting}"
                + (f"; {why}" if why else ""))

    def _wait_ready(self, rt: RuntimeDir, proc: subprocess.Popen[bytes], router: process.ProcessRef,
                    deadline: float) -> None:
        """Wait for the helper's control socket (it binds only after the guest's HELLO)."""
        while not rt.control_socket.exists():
            status = proc.poll()
            if status is not None:
                raise Permanent(f"the VM exited with status {status} before guest init answered:"
                                f"{self._early_exit_tails(rt)}", "see vmm.log and serial.log")
            if not process.is_alive(router):
                process.reap_if_child(router.pid)
                if time.monotonic() >= deadline - 0.05:
                    break
                raise Permanent(f"the channel helper gave up before guest init answered; "
                                f"serial log tail:\n{rt.serial_tail()}", "see router.log and serial.log")
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        else:
            return
        raise Transient(f"guest init did not answer within the boot timeout; serial log tail:\n"
                        f"{rt.serial_tail()}", "raise --boot-timeout or check the kernel and initramfs")

    def _teardown(self, rt: RuntimeDir, *, kill_vmm: bool) -> None:
        router = self.live_router(rt)
        if router is not None:
            process.send_signal(router, signal.SIGKILL)
            process.wait_gone(router, 5)
        if kill_vmm:
            vmm = self.live_vmm(rt)
            if vmm is not None:
                process.send_signal(vmm, signal.SIGKILL)
                process.wait_gone(vmm, 10)
        for name in (*self.boot_files, "control.sock"):
            (rt.path / name).unlink(missing_ok=True)
        if self.live_vmm(rt) is None:
            self.detach_network(rt, rt.path.name)

    def _readiness(self, rt: RuntimeDir, observed_at: str, detail: str = "",
                   state: str | None = None) -> dict[str, Any]:
        """The readiness object: the guest is ready iff the helper's control socket exists
        (and the VM is not paused)."""
        usable = rt.control_socket.exists() and (state or self.recorded_state(rt)) != "paused"
        ready: dict[str, Any] = {"ready": usable, "observedAt": observed_at}
        if not ready["ready"] and detail:
            ready["detail"] = detail
        out = {"guestReady": ready, "execReady": dict(ready), "shellReady": dict(ready)}
        if (rt.runtime() or {}).get("readiness") == "vmm":
            out["vmmReady"] = {"ready": self.live_vmm(rt) is not None, "observedAt": observed_at}
        return out

    def start(self, request: Request) -> Response:
        rt, ref, guest_ready = self._boot(request)
        runtime = rt.runtime() or {}
        state = "running" if guest_ready else "starting"
        detail = f"serial={rt.serial_log}" if guest_ready else self._vmm_only_detail(ref)
        event = Event(identity=request.identity, state=state, detail=detail)  # type: ignore[arg-type]
        return Response(ok=True, backend=self.name, event=event,
                        readiness=self._readiness(rt, event.observedAt, detail),
                        runtime={"pid": ref.pid, "bootSeconds": runtime.get("bootSeconds"),
                                 "vmmSeconds": runtime.get("vmmSeconds"),
                                 "controlSocket": str(rt.control_socket)})

    def run(self, request: Request) -> Response:
        """Foreground: boot, run ``request.exec``, power off, answer the result."""
        from microagent.channel import ExecRequest, open_channel

        if request.exec is None:
            raise Permanent("run needs an exec section naming the command to run")
        assert request.config is not None
        if request.config.readiness != "guest":
            raise Permanent("run needs the guest: config.readiness must be 'guest' for run",
                            "use start with readiness 'vmm' for process-model checks")
        rt, ref, _ = self._boot(request)
        spec = request.exec
        try:
            with open_channel(rt.control_socket, hello_timeout=10.0) as conn:
                result = conn.exec(ExecRequest(argv=list(spec.argv), env=list(spec.env),
                                               cwd=spec.cwd or None, user=spec.user or None,
                                               timeout_s=spec.timeoutSeconds or None))
                conn.shutdown("poweroff", grace_s=2.0)
        except MicroagentError as exc:
            self._teardown(rt, kill_vmm=True)
            self.record(rt, request, "failed", exc.message)
            raise
        result_doc = result.to_dict()
        write_json_atomic(rt.result_json, result_doc)
        if not process.wait_gone(ref, HALT_TIMEOUT_S):
            process.send_signal(ref, signal.SIGKILL)
            process.wait_gone(ref, 10)
        self._teardown(rt, kill_vmm=False)
        event = self.record(rt, request, "stopped", "powered_off")
        return Response(ok=True, backend=self.name, event=event, result=result_doc)

    def inspect(self, request: Request) -> Response:
        rt = runtime_dir_for(request)
        runtime = rt.runtime()
        if runtime is None:
            raise NotFound(f"workspace {self._name(request)} has no runtime state", "create or start it first")
        state = str(runtime.get("state", "unknown"))
        vmm = _ref(runtime)
        alive = vmm is not None and process.is_alive(vmm)
        detail = {"quarantined": "quarantined: every host path into the guest is severed",
                  "paused": "paused: the vcpus are stopped; resume it first"}.get(state, "")
        if alive and state != "quarantined":
            try:
                netattach.revive(rt)  # a dead pasta was the guest's way out
            except MicroagentError:
                pass  # inspect still answers; the next one tries again (pasta.log says why)
        if not alive and self.live_router(rt) is not None:
            self._teardown(rt, kill_vmm=False)  # e.g. a "failed" stop whose VMM died later
        if state in LIVE_STATES and not alive:
            self._teardown(rt, kill_vmm=False)
            event = self.record(rt, request, "failed",
                                f"{self.name} (pid {vmm.pid if vmm else '?'}) exited while nobody watched; "
                                f"serial tail: {rt.serial_tail(3)}")
        elif state == "starting" and alive and runtime.get("readiness") == "vmm":
            # started without waiting for the guest: promote once the helper has its HELLO
            assert vmm is not None
            router_alive = self.live_router(rt) is not None
            if router_alive and rt.control_socket.exists():
                event = self.record(rt, request, "running", "guest init answered after a readiness=vmm start")
            else:
                event = Event(identity=request.identity, state=state,  # type: ignore[arg-type]
                              detail=self._vmm_only_detail(vmm, router_alive))
            detail = event.detail
        else:
            if state == "running" and alive and self.live_router(rt) is None:
                rt.control_socket.unlink(missing_ok=True)  # the dead helper's socket
                listeners = netattach.rebind_published(runtime)  # its published ports died with it
                try:
                    self._spawn_router(rt, 10.0, listeners)  # a new helper takes over the channel
                finally:
                    for sock, _ in listeners:
                        sock.close()
                deadline = time.monotonic() + 10.0
                while not rt.control_socket.exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
            event = Event(identity=request.identity, state=state,  # type: ignore[arg-type]
                          detail=f"serial={rt.serial_log}")
        if alive and event.state in ("running", "starting", "paused"):
            event = self._reconcile_pause(rt, request, runtime, event)
            detail = event.detail if event.state == "paused" else detail
        router = self.live_router(rt)
        info: dict[str, Any] = {"pid": vmm.pid if vmm else None, "alive": alive,
                                "routerPid": router.pid if router else None,
                                "serialLogPath": str(rt.serial_log),
                                "controlSocket": str(rt.control_socket),
                                "startedAt": runtime.get("startedAt"),
                                "bootSeconds": runtime.get("bootSeconds")}
        if alive:
            status = self.vmm_status(rt)
            if status is not None:
                info["vmm"] = status
        readiness = self._readiness(rt, event.observedAt, detail, event.state) if alive else None
        return Response(ok=True, backend=self.name, event=event, readiness=readiness, runtime=info)

    def _reconcile_pause(self, rt: RuntimeDir, request: Request, runtime: dict[str, Any],
                         event: Event) -> Event:
        """The VMM's word over the record: a VM it paused on its own reads ``paused`` with
        the reason (recorded if the disk lets us); one running again reads as before."""
        live = self.run_status(rt)
        if live is None:
            return event
        reason = live.get("reason")
        if reason:
            detail = paused_detail(self._name(request), reason)
            if event.state == "paused" and runtime.get("pausedReason") == reason:
                return dataclasses.replace(event, detail=detail)
            paused_from = runtime.get("pausedFrom") if event.state == "paused" else event.state
            return self.record(rt, request, "paused", detail, pausedFrom=paused_from or "running",
                               pausedReason=reason)
        if event.state == "paused" and runtime.get("pausedReason") and live.get("running"):
            back = str(runtime.get("pausedFrom") or "running")
            return self.record(rt, request, back, "the VM runs again", pausedFrom=None, pausedReason=None)
        return event

    def _require_live(self, request: Request, verb: str) -> tuple[RuntimeDir, process.ProcessRef]:
        rt = runtime_dir_for(request)
        ref = self.live_vmm(rt)
        if ref is None:
            raise Conflict(f"workspace {self._name(request)} is not running "
                           f"(state {self.recorded_state(rt)}); nothing to {verb}")
        return rt, ref

    def halt(self, request: Request) -> Response:
        from microagent.channel import open_channel

        rt, ref = self._require_live(request, "halt")
        name = self._name(request)
        if self.recorded_state(rt) == "quarantined":
            raise Conflict(f"workspace {name} is quarantined; its channel is severed", "use stop or kill")
        live = self.run_status(rt)
        if live is not None and live.get("reason"):
            raise Conflict(f"workspace {name} is {paused_detail(name, live['reason'])}",
                           "halt needs a running guest: resume it first, or use stop or kill")
        if self.recorded_state(rt) == "starting" and not rt.control_socket.exists():
            raise Conflict(f"workspace {name} is starting: guest init has not answered, so it cannot be "
                           "halted through it", "use stop or kill")
        try:
            stop_signal = int(((rt.runtime() or {}).get("config") or {}).get("stopSignal") or 15)
            with open_channel(rt.control_socket, hello_timeout=5.0, connect_timeout=5.0) as conn:
                conn.shutdown("poweroff", grace_s=HALT_GRACE_S, signal=stop_signal)
        except MicroagentError as exc:
            self.record(rt, request, "failed", f"halt could not reach guest init: {exc.message}")
            raise Transient(f"halt could not reach guest init: {exc.message}; the VM is still running "
                            f"(pid {ref.pid})", "use stop or kill") from exc
        if not process.wait_gone(ref, HALT_TIMEOUT_S):
            self.record(rt, request, "failed", f"guest did not power off within {HALT_TIMEOUT_S:.0f}s")
            raise Transient(f"guest did not power off within {HALT_TIMEOUT_S:.0f}s; {self.name} "
                            f"(pid {ref.pid}) was left running", "use stop or kill")
        self._teardown(rt, kill_vmm=False)
        return Response(ok=True, backend=self.name, event=self.record(rt, request, "halted", "guest powered off"))

    def stop(self, request: Request) -> Response:
        rt, ref = self._require_live(request, "stop")
        process.send_signal(ref, signal.SIGTERM)
        if not process.wait_gone(ref, STOP_GRACE_S):
            self.record(rt, request, "failed", f"{self.name} survived SIGTERM for {STOP_GRACE_S:.0f}s")
            raise Transient(f"{self.name} (pid {ref.pid}) is still alive {STOP_GRACE_S:.0f}s after SIGTERM",
                            "use kill")
        self._teardown(rt, kill_vmm=False)
        return Response(ok=True, backend=self.name, event=self.record(rt, request, "stopped", "SIGTERM"))

    def kill(self, request: Request) -> Response:
        rt, ref = self._require_live(request, "kill")
        process.send_signal(ref, signal.SIGKILL)
        if not process.wait_gone(ref, 10.0):
            raise Transient(f"{self.name} (pid {ref.pid}) survived SIGKILL", "check the process table")
        self._teardown(rt, kill_vmm=False)
        return Response(ok=True, backend=self.name, event=self.record(rt, request, "stopped", "SIGKILL"))

    def quarantine(self, request: Request) -> Response:
        rt, ref = self._require_live(request, "quarantine")
        severed = []
        router = self.live_router(rt)
        if router is not None:
            process.send_signal(router, signal.SIGKILL)
            process.wait_gone(router, 5)
            severed.append("channel helper")
        for name in ("control.sock",):
            if (rt.path / name).exists():
                (rt.path / name).unlink()
                severed.append(name)
        severed += self.sever(rt)
        severed += self.detach_network(rt, self._name(request))  # TAP and firewall rules
        # the helper kept serial.log capped; the guest still writes to it
        process.spawn_detached(serial_log.watcher_argv(sys.executable, rt.serial_log, serial_log.cap_bytes(), ref.pid),
                               cwd=rt.path, log_path=rt.path / "router.log")
        event = self.record(rt, request, "quarantined",
                            f"severed: {', '.join(severed) or 'nothing left'}; pid {ref.pid} kept")
        return Response(ok=True, backend=self.name, event=event, runtime={"pid": ref.pid, "alive": True})

    def pause(self, request: Request) -> Response:
        rt, _ = self._require_live(request, "pause")
        state = self.recorded_state(rt)
        # a readiness=vmm start leaves a live VM in "starting": pausable too
        vmm_only = state == "starting" and (rt.runtime() or {}).get("readiness") == "vmm"
        if state != "running" and not vmm_only:
            raise Conflict(f"workspace {self._name(request)} is {state}; only running "
                           "workspaces can be paused")
        self.pause_vm(rt)
        return Response(ok=True, backend=self.name,
                        event=self.record(rt, request, "paused", "vcpus stopped", pausedFrom=state))

    def resume(self, request: Request) -> Response:
        rt, _ = self._require_live(request, "resume")
        live = self.run_status(rt)
        paused_on_its_own = live is not None and bool(live.get("reason"))
        if self.recorded_state(rt) != "paused" and not paused_on_its_own:
            raise Conflict(f"workspace {self._name(request)} is {self.recorded_state(rt)}, not paused")
        self.resume_vm(rt)
        runtime = rt.runtime() or {}
        back = str((runtime.get("pausedFrom") if runtime.get("state") == "paused" else runtime.get("state"))
                   or "running")
        return Response(ok=True, backend=self.name,
                        event=self.record(rt, request, back, "vcpus resumed", pausedFrom=None,
                                          pausedReason=None))

    def delete(self, request: Request) -> Response:
        rt = runtime_dir_for(request)
        ref = self.live_vmm(rt)
        name = self._name(request)
        if ref is not None:
            raise Conflict(f"workspace {name} is running ({self.name} pid {ref.pid}); "
                           "stop or kill it before delete", "use kill, or delete -f")
        self._teardown(rt, kill_vmm=False)
        assert request.config is not None and request.identity is not None
        ws = workspace_dir(Path(request.config.stateDir), name)
        existed = rt.path.exists() or ws.exists()
        shutil.rmtree(rt.path, ignore_errors=True)
        shutil.rmtree(ws, ignore_errors=True)
        netattach.release(Path(request.config.stateDir), name)
        event = Event(identity=request.identity, state="unknown", detail="deleted" if existed else "absent")
        return Response(ok=True, backend=self.name, event=event)

