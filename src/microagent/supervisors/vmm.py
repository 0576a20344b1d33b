"""The lifecycle every backend shares (qemu, firecracker, apple-vf, windows-hyperv).

A backend supplies how to check the host, launch its VM, and reach the
guest channel; this module owns the process model (docs/supervisor-api.md,
"Process model"; the processes: docs/architecture.md, "Per-workspace processes").
It sees the VM only through a :class:`~.handle.VMHandle` (a process
reference, or Hyper-V's compute-system ID) and the channel helper through a
:class:`~.handle.HelperHandle`:

- ``start``: attach the network, launch the VM (recording how to find it
  again), spawn the channel helper (:mod:`microagent.channel.router`) and wait
  until it has the guest's ``HELLO``; a boot timeout undoes all of it, in
  reverse, and reports the serial tail.  With ``config.readiness = "vmm"``
  start returns as soon as the VM is up: state ``starting``, ``guestReady``
  false; the helper keeps trying the guest until the boot timeout and a later
  ``inspect`` promotes the workspace to ``running`` if the guest answered.
- ``halt``: power-off through guest init (every guest process gets the
  image's StopSignal, then the halt grace); ``halted`` or ``failed`` (VM kept).
- ``stop``: the polite stop (SIGTERM, HcsShutdownComputeSystem), grace,
  ``stopped`` or ``failed`` (no silent escalation).
- ``kill``: the forced stop (SIGKILL, HcsTerminateComputeSystem), ``stopped``.
- ``quarantine``: kill the helper, unlink every path into the guest, keep
  the VM, ``quarantined``.
- ``delete``: refused while the VM lives.
- ``inspect``: the recorded state reconciled with the VM's liveness and
  with what the VMM itself says (a VM it paused on its own, e.g. for a full
  host disk, reads ``paused`` with the reason); a running workspace whose
  helper died gets a new helper.
- ``pause``/``resume``: stop and continue the vcpus; resume also continues a
  VM the VMM paused for lack of disk space, once there is space again.
- ``snapshot``: save a running or paused VM (device state, memory, disk) into
  a directory the caller stages; the VM is left as it was.  ``start`` with a
  ``snapshot`` restores one instead of booting, then makes the guest whole
  (clock, entropy, hostname, restore generation) over the channel.

State records on the way down (kill, stop, halt, delete, reconciliation)
are best effort on a full disk (:mod:`microagent.runtime_state`): those
commands must work exactly when the disk is full.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from msgspec import Struct, structs

import microagent.serial_log as serial_log
from microagent.channel.vm_events import paused_detail
from microagent.errors import Conflict, MicroagentError, NotFound, Permanent, Transient, Unsupported
from microagent.host import process
from microagent.network.plan import NetworkPlan
from microagent.paths import require_private_root, workspace_dir
from microagent.runtime_state import RuntimeDir, RuntimeRecord, locate_runtime_dir, write_json_atomic
from microagent.supervisors import netattach
from microagent.supervisors.base import Backend
from microagent.supervisors.handle import HelperHandle, ProcessHandle, ProcessHelper, VMHandle
from microagent.vmkit.states import LIVE_STATES, WorkspaceState
from microagent.vmkit.types import Config, Event, Request, Response, now_rfc3339, to_wire
from microagent.waiting import wait_until

STOP_GRACE_S = 5.0
HALT_TIMEOUT_S = 15.0
HALT_GRACE_S = 5.0
KILL_WAIT_S = 10.0

S = WorkspaceState


class BootContext(Struct):
    """What ``preflight`` found and the boot adds, handed from hook to hook."""

    #: the VMM executable and the accelerator it runs with (process VMMs)
    binary: str = ""
    accel: str = ""
    #: the host side of the guest's network, once attached
    network: NetworkPlan | None = None


def runtime_dir_for(request: Request) -> RuntimeDir:
    """``<stateDir>/run/<name>`` (an earlier layout's directory moved there when at rest).

    :raises PolicyDenied: when another user owns or can write to the state directory.
    """
    assert request.config is not None and request.identity is not None
    root = require_private_root(Path(request.config.stateDir))
    return RuntimeDir(locate_runtime_dir(root, request.identity.runtimeID))


class VMMBackend(Backend):
    """Shared lifecycle; subclasses fill in the VM-specific hooks.

    The defaults are those of a VM that is a host process of ours (qemu,
    firecracker, apple-vf's vmhost) served by the channel router.
    """

    #: sockets/files in the runtime dir that belong to one boot
    boot_files: tuple[str, ...] = ()
    #: whether it takes snapshots (``save_vm``) and ``start`` restores them (``launch``, ``after_launch``)
    supports_snapshots = False

    # --- hooks: the host and the boot -----------------------------------------

    def preflight(self, request: Request) -> BootContext:
        """Check the host and the request's files; returns what the boot needs."""
        raise NotImplementedError

    def runtime_dir(self, request: Request) -> RuntimeDir:
        return runtime_dir_for(request)

    def spawn(self, request: Request, rt: RuntimeDir, ctx: BootContext) -> tuple[subprocess.Popen[bytes], list[str]]:
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
        """Host-side networking before the VM exists: published ports bound, NAT TAP and
        rules, or pasta's namespace."""
        return netattach.attach(cfg, rt, name, self.user_provider())

    def guest_network(self, attachment: netattach.Attachment, name: str) -> dict[str, Any]:
        """The ``network`` object of the per-boot config (the guest's addressing)."""
        return attachment.plan.guest_config()

    def detach_network(self, rt: RuntimeDir, name: str) -> list[str]:
        """Undo :meth:`attach_network` (published listeners close with the helper)."""
        return netattach.detach(rt, name)

    def release_network(self, state_root: Path, name: str) -> None:
        """Give back what the workspace holds beyond one boot (its NAT lease), on delete."""
        netattach.release(state_root, name)

    def prepare_boot(self, request: Request, rt: RuntimeDir, ctx: BootContext,
                     attachment: netattach.Attachment) -> Request:
        """The per-boot config disk (hostname, addressing, env); returns the request naming it."""
        cfg = request.config
        assert cfg is not None and request.identity is not None
        if cfg.configDiskPath:
            return request
        name = request.identity.runtimeID
        env, proxy = cfg.env, None
        if cfg.network.egress is not None:
            from microagent.egress import runtime as egress_runtime

            env, proxy = egress_runtime.prepare(rt.path, cfg.network.egress, cfg.env)
        disk = netattach.write_config_disk(rt, cfg.hostname or name, self.guest_network(attachment, name), env,
                                           proxy=proxy, service=to_wire(cfg.service) if cfg.service else None,
                                           mounts=self.guest_mounts(cfg))
        return structs.replace(request, config=structs.replace(cfg, configDiskPath=str(disk)))

    def disk_device(self, index: int) -> str:
        """The guest device of ``config.disks[index]``: after the root disk (vda)."""
        return f"/dev/vd{chr(ord('b') + index)}"

    #: whether ``config.shares`` (host folders) can be served
    supports_shares = False

    def guest_mounts(self, cfg: Config) -> list[dict[str, Any]]:
        """The config disk's ``mounts``: each disk and share, where guest init mounts it (docs/volumes.md)."""
        if cfg.shares and not self.supports_shares:
            raise Unsupported(f"the {self.name} backend cannot share host folders with the guest",
                              "use the qemu backend for -v /host/dir:/guest/path, or a volume")
        mounts = [{"type": "ext4", "source": self.disk_device(i), "target": d.mountpoint, "ro": d.mode == "ro"}
                  for i, d in enumerate(cfg.disks)]
        mounts += [{"type": "virtiofs", "source": s.tag, "target": s.mountpoint, "ro": s.mode == "ro"}
                   for s in cfg.shares]
        return mounts

    def pause_vm(self, rt: RuntimeDir) -> None:
        raise self._unsupported("pause")

    def resume_vm(self, rt: RuntimeDir) -> None:
        raise self._unsupported("resume")

    def save_vm(self, rt: RuntimeDir, dest: Path, *, resume: bool) -> dict[str, Any]:
        """Write the VM's snapshot files into ``dest`` (paused meanwhile; resumed when
        ``resume``); returns what the snapshot manifest records about the VMM."""
        raise self._unsupported("snapshot")

    def refuse_incompatible(self, request: Request, version: str, layout: str, why: str) -> None:
        """Before a restore touches anything: the snapshot's recorded VMM version and device
        layout must be this host's and this workspace's (``why``: what binds a saved state to them).

        :raises Conflict: naming both versions or both layouts.
        """
        snap = request.snapshot
        assert snap is not None
        if snap.vmmVersion and snap.vmmVersion != version:
            raise Conflict(f"the snapshot was saved by {snap.vmmVersion!r}, this host runs {version!r}; {why}",
                           "take a new snapshot on this host (a cold start works)")
        if snap.layout and snap.layout != layout:
            raise Conflict(f"the snapshot's device layout differs from this workspace's: saved {snap.layout}, "
                           f"now {layout}", "restore it into a workspace with the same memory, CPUs, disks and network")

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

    # --- hooks: the VM and its helper ---------------------------------------------

    def vm_handle(self, rt: RuntimeDir, runtime: RuntimeRecord | None = None) -> VMHandle | None:
        """The VM ``runtime.json`` records (alive or not); ``None`` when none is recorded."""
        runtime = rt.runtime() if runtime is None else runtime
        if runtime is None or runtime.pid is None or runtime.starttime is None:
            return None
        return self._process_handle(rt, process.ProcessRef(int(runtime.pid), int(runtime.starttime)))

    def _process_handle(self, rt: RuntimeDir, ref: process.ProcessRef,
                        proc: subprocess.Popen[bytes] | None = None) -> ProcessHandle:
        return ProcessHandle(self.name, ref, pause_vm=lambda: self.pause_vm(rt),
                             resume_vm=lambda: self.resume_vm(rt), proc=proc)

    def launch(self, request: Request, rt: RuntimeDir, ctx: BootContext) -> tuple[VMHandle, dict[str, Any]]:
        """Create the VM; returns it and the :class:`RuntimeRecord` fields that find it again."""
        proc, argv = self.spawn(request, rt, ctx)
        try:
            ref = process.ref_for(proc.pid)
        except Permanent:
            proc.wait()
            raise Permanent(f"{self.name} exited at once: {self._vmm_log_tail(rt)}",
                            "see vmm.log in the runtime directory") from None
        return self._process_handle(rt, ref, proc), {"pid": ref.pid, "starttime": ref.starttime, "argv": argv}

    def after_launch(self, request: Request, rt: RuntimeDir, vm: VMHandle) -> None:
        """Bring the launched VM up to the point where its guest can boot."""
        assert isinstance(vm, ProcessHandle) and vm.proc is not None
        self.after_spawn(request, rt, vm.proc)

    def helper(self, rt: RuntimeDir, runtime: RuntimeRecord | None = None) -> HelperHandle | None:
        """The channel helper ``runtime.json`` records (alive or not)."""
        runtime = rt.runtime() if runtime is None else runtime
        if runtime is None or runtime.routerPid is None or runtime.routerStarttime is None:
            return None
        return ProcessHelper(process.ProcessRef(int(runtime.routerPid), int(runtime.routerStarttime)))

    def spawn_helper(self, rt: RuntimeDir, runtime: RuntimeRecord, hello_timeout: float,
                     listeners: list[tuple[socket.socket, int]], generation: int | None = None) -> HelperHandle:
        """The channel helper; it inherits the published ports' listening sockets.
        ``generation``: a restored guest's, handed to guest init in the helper's HELLO."""
        from microagent.egress.runtime import helper_args

        module, egress_args = helper_args(rt.path, runtime.config or {})  # the egress proxy rides in the helper
        # -c, not -m: runpy's imports would cost each workspace's helper about 0.7 MiB;
        # -P: no run-directory entry on sys.path (nothing there may shadow a module)
        argv = [sys.executable, "-P", "-c", f"import sys; from {module} import main; sys.exit(main())",
                *egress_args, "--guest", self.guest_spec(rt),
                "--listen", str(rt.control_socket), "--hello-timeout", f"{max(hello_timeout, 0.1):.3f}",
                "--serial-log", str(rt.serial_log), "--serial-log-max-bytes", str(serial_log.cap_bytes()),
                *self.router_args(rt)]
        if generation is not None:
            argv += ["--generation", str(generation)]
        for sock, guest_port in listeners:
            argv += ["--publish", f"{sock.fileno()}:{guest_port}"]
        proc = process.spawn_detached(argv, cwd=rt.path, log_path=rt.path / "router.log",
                                      pass_fds=tuple(sock.fileno() for sock, _ in listeners))
        try:
            ref = process.ref_for(proc.pid)
        except Permanent:
            proc.wait()
            raise Permanent("the channel helper exited at once; see router.log") from None
        rt.update_runtime(routerPid=ref.pid, routerStarttime=ref.starttime)
        return ProcessHelper(ref)

    def published_listeners(self, runtime: RuntimeRecord) -> list[tuple[socket.socket, int]]:
        """The published ports bound again for a new helper (the dead one's died with it)."""
        return netattach.rebind_published(runtime.config or {})

    def control_ready(self, rt: RuntimeDir) -> bool:
        """Whether the helper serves the guest channel (it binds only after the guest's HELLO)."""
        return rt.control_socket.exists()

    def watch_serial(self, rt: RuntimeDir, vm: VMHandle) -> None:
        """Keep serial.log capped once the helper (which did it) is gone: the guest still writes."""
        if isinstance(vm, ProcessHandle):
            process.spawn_detached(
                serial_log.watcher_argv(sys.executable, rt.serial_log, serial_log.cap_bytes(), vm.ref.pid),
                cwd=rt.path, log_path=rt.path / "router.log")

    def state_detail(self, rt: RuntimeDir, vm: VMHandle | None) -> str:
        """The detail of an event that only repeats the recorded state."""
        return f"serial={rt.serial_log}"

    def runtime_info(self, rt: RuntimeDir, runtime: RuntimeRecord, vm: VMHandle | None,
                     alive: bool) -> dict[str, Any]:
        """The ``runtime`` object of an ``inspect`` answer."""
        helper = self.live_helper(rt)
        info: dict[str, Any] = {"pid": vm.ids()["pid"] if vm else None, "alive": alive,
                                "routerPid": helper.pid if helper else None,
                                "serialLogPath": str(rt.serial_log),
                                "controlSocket": str(rt.control_socket),
                                "startedAt": runtime.startedAt,
                                "bootSeconds": runtime.bootSeconds}
        if alive:
            status = self.vmm_status(rt)
            if status is not None:
                info["vmm"] = status
        return info

    def revive_network(self, rt: RuntimeDir) -> None:
        """Restart what a running VM's network lost (a dead pasta); best effort."""
        try:
            netattach.revive(rt)
        except MicroagentError:
            pass  # inspect still answers; the next one tries again (pasta.log says why)

    # --- state helpers ---------------------------------------------------------

    def record(self, rt: RuntimeDir, request: Request, state: WorkspaceState, detail: str = "", *,
               best_effort: bool = True, **runtime_updates: Any) -> Event:
        """Record a state; on a full disk skipped unless ``best_effort`` is false."""
        assert request.identity is not None
        return rt.record(request.identity, state, detail, best_effort=best_effort, **runtime_updates)

    def live_vm(self, rt: RuntimeDir) -> VMHandle | None:
        vm = self.vm_handle(rt)
        return vm if vm is not None and vm.alive() else None

    def live_helper(self, rt: RuntimeDir) -> HelperHandle | None:
        helper = self.helper(rt)
        return helper if helper is not None and helper.alive() else None

    def _name(self, request: Request) -> str:
        assert request.identity is not None
        return request.identity.runtimeID

    def _vmm_log_tail(self, rt: RuntimeDir) -> str:
        try:
            return " | ".join(rt.vmm_log.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return ""

    def _early_exit_tails(self, rt: RuntimeDir) -> str:
        """What a VM that died before the guest answered left: its VMM's log, then the console."""
        vmm = self._vmm_log_tail(rt)
        serial = rt.serial_tail()
        said = (f"\n{self.name} said: {vmm}" if vmm else
                f"\n{self.name} wrote nothing to vmm.log" if rt.vmm_log.exists() else "")
        return said + (f"\nserial log tail:\n{serial}" if serial.strip() else "\nthe serial log is empty")

    # --- commands --------------------------------------------------------------

    def check(self, request: Request) -> Response:
        self.preflight(request)
        return self.event(request, "unknown", "check passed")

    def on_prepare(self, request: Request, rt: RuntimeDir) -> tuple[str, dict[str, Any]]:
        """Backend work of ``prepare``; returns the event detail and runtime fields to record."""
        return "", {}

    def prepare(self, request: Request) -> Response:
        self.preflight(request)
        rt = self.runtime_dir(request)
        live = self.live_vm(rt)
        if live is not None:
            raise Conflict(f"workspace {self._name(request)} is running ({live.label}); stop it first")
        rt.create()
        detail, fields = self.on_prepare(request, rt)
        event = self.record(rt, request, S.PREPARED, detail, backend=self.name, config=to_wire(request.config),
                            **fields)
        return Response(ok=True, backend=self.name, event=event)

    def _boot(self, request: Request) -> tuple[RuntimeDir, VMHandle, bool]:
        """Launch the VM and (readiness ``guest``) wait for guest init.

        Every step that leaves something behind (network attached, VM launched,
        helper spawned) registers its undoing; a failure undoes them in reverse
        and, once a VM was launched, records ``failed``.

        :returns: the runtime dir, the VM, and whether the guest answered.
        """
        ctx = self.preflight(request)
        cfg, name = request.config, self._name(request)
        assert cfg is not None
        if request.snapshot is not None and not self.supports_snapshots:
            raise self._unsupported("start from a snapshot")
        if request.snapshot is not None and (cfg.readiness != "guest" or request.command != "start"):
            raise Permanent("a snapshot is restored by start with readiness 'guest' only")
        rt = self.runtime_dir(request)
        if rt.recorded_state() == S.QUARANTINED:
            raise Conflict(f"workspace {name} is quarantined", "stop or kill it before starting it again")
        live = self.live_vm(rt)
        if live is not None:
            raise Conflict(f"workspace {name} is already running ({live.label})", "stop, kill or halt it first")
        rt.create()
        self._unlink_boot_files(rt)
        launched = False

        def record_failure(exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
            if exc is not None and launched:
                self.record(rt, request, S.FAILED, exc.message if isinstance(exc, MicroagentError) else str(exc))
            return False

        with ExitStack() as undo:
            undo.push(record_failure)  # runs last: after everything below was undone
            attachment = self.attach_network(cfg, rt, name)  # ports bound, TAP up: before the VM exists
            undo.callback(self.detach_network, rt, name)
            undo.callback(attachment.close_listeners)
            ctx.network = attachment.plan
            request = self.prepare_boot(request, rt, ctx, attachment)
            cfg = request.config
            assert cfg is not None
            serial_log.start_new_boot(rt.serial_log, f"[microagent] boot {now_rfc3339()} backend={self.name}\n")
            started = time.monotonic()
            deadline = started + cfg.timeoutSeconds
            vm, vm_fields = self.launch(request, rt, ctx)
            undo.callback(self._unlink_boot_files, rt)
            undo.callback(self._kill, vm)
            launched = True
            self.record(rt, request, S.STARTING, self.state_detail(rt, vm), backend=self.name,
                        config=to_wire(cfg), startedAt=now_rfc3339(), serialLogPath=str(rt.serial_log),
                        controlSocket=str(rt.control_socket), readiness=cfg.readiness, routerPid=None,
                        routerStarttime=None, helper=None, bootSeconds=None, pausedFrom=None, pausedReason=None,
                        **vm_fields, best_effort=False)
            self.after_launch(request, rt, vm)
            runtime = rt.runtime() or RuntimeRecord()
            if cfg.readiness == "vmm":
                # Do not wait for the guest: the helper keeps trying until the boot timeout.
                helper = self.spawn_helper(rt, runtime, cfg.timeoutSeconds, attachment.listeners)
                undo.callback(helper.kill)
            else:
                restored = {"generation": request.snapshot.generation} if request.snapshot else {}
                helper = self.spawn_helper(rt, runtime, deadline - time.monotonic(), attachment.listeners,
                                           **restored)
                undo.callback(helper.kill)
                self._wait_ready(rt, vm, helper, deadline)
                if request.snapshot is not None:
                    self._make_guest_whole(rt, request, self.guest_network(attachment, name))
            undo.pop_all()
        attachment.close_listeners()  # the helper holds them now
        if cfg.readiness == "vmm":
            self.record(rt, request, S.STARTING, self._vmm_only_detail(vm),
                        vmmSeconds=round(time.monotonic() - started, 3))
            return rt, vm, False
        self.record(rt, request, S.RUNNING, self.state_detail(rt, vm),
                    bootSeconds=round(time.monotonic() - started, 3))
        return rt, vm, True

    def _make_guest_whole(self, rt: RuntimeDir, request: Request, network: dict[str, Any]) -> None:
        """After a restore the guest's clock is the snapshot's and its random pool that of
        every other restore of it: guest init sets the clock, mixes in host entropy and
        reseeds, takes the hostname and ``network`` (this boot's addressing and MAC: a
        fork's are not the snapshot's), and reports the restore generation from now on."""
        from microagent.channel import open_channel

        assert request.config is not None and request.snapshot is not None
        with open_channel(rt.control_socket, hello_timeout=10.0) as conn:
            with conn.open_session("restore", timeNs=time.time_ns(), entropy=os.urandom(64).hex(),
                                   hostname=request.config.hostname or self._name(request),
                                   generation=request.snapshot.generation, network=network) as session:
                session.wait_final(10.0)

    def _vmm_only_detail(self, vm: VMHandle, router_alive: bool = True) -> str:
        why = self.guest_unready_reason()
        waiting = ("the channel helper is waiting for guest init" if router_alive
                   else "guest init did not answer within the boot timeout")
        return (f"readiness=vmm: {vm.label} is up and its API answers; {waiting}"
                + (f"; {why}" if why else ""))

    def _wait_ready(self, rt: RuntimeDir, vm: VMHandle, helper: HelperHandle, deadline: float) -> None:
        """Wait for the helper to serve the channel; the VM's or the helper's end is an error."""
        def ready() -> bool:
            if self.control_ready(rt):
                return True
            if not vm.alive():
                raise Permanent(f"{vm.exit_detail()} before guest init answered:{self._early_exit_tails(rt)}",
                                "see vmm.log and serial.log")
            if not helper.alive():
                process.reap_if_child(helper.pid)
                if time.monotonic() < deadline - 0.05:
                    raise Permanent(f"the channel helper gave up before guest init answered; "
                                    f"serial log tail:\n{rt.serial_tail()}", "see router.log and serial.log")
                return True  # gave up at the boot timeout: report that
            return False

        if wait_until(ready, deadline - time.monotonic(), 0.01) and self.control_ready(rt):
            return
        raise Transient(f"guest init did not answer within the boot timeout; serial log tail:\n"
                        f"{rt.serial_tail()}", "raise --boot-timeout or check the kernel and initramfs")

    @staticmethod
    def _kill(vm: VMHandle) -> None:
        if vm.alive():
            vm.kill()
            vm.wait_gone(KILL_WAIT_S)

    def _unlink_boot_files(self, rt: RuntimeDir) -> None:
        for name in (*self.boot_files, "control.sock"):
            (rt.path / name).unlink(missing_ok=True)

    def _teardown(self, rt: RuntimeDir, *, kill_vm: bool) -> None:
        """End the helper (and the VM when asked); once the VM is gone, its network goes too."""
        vm = self.live_vm(rt) if kill_vm else None
        if vm is not None:
            vm.kill()  # now, not after the helper is gone: QEMU takes ~20 ms to exit, meanwhile
        helper = self.live_helper(rt)
        if helper is not None:
            helper.kill()
        if vm is not None:
            self._kill(vm)
        self._unlink_boot_files(rt)
        if self.live_vm(rt) is None:
            self.detach_network(rt, rt.path.name)

    def _readiness(self, rt: RuntimeDir, observed_at: str, detail: str = "",
                   state: WorkspaceState | None = None) -> dict[str, Any]:
        """The readiness object: the guest is ready iff the helper serves the channel
        (and the VM is not paused)."""
        usable = self.control_ready(rt) and (state or rt.recorded_state()) != S.PAUSED
        ready: dict[str, Any] = {"ready": usable, "observedAt": observed_at}
        if not ready["ready"] and detail:
            ready["detail"] = detail
        out = {"guestReady": ready, "execReady": dict(ready), "shellReady": dict(ready)}
        runtime = rt.runtime()
        if runtime is not None and runtime.readiness == "vmm":
            out["vmmReady"] = {"ready": self.live_vm(rt) is not None, "observedAt": observed_at}
        return out

    def start(self, request: Request) -> Response:
        rt, vm, guest_ready = self._boot(request)
        runtime = rt.runtime() or RuntimeRecord()
        state = S.RUNNING if guest_ready else S.STARTING
        detail = self.state_detail(rt, vm) if guest_ready else self._vmm_only_detail(vm)
        event = Event(identity=request.identity, state=state.value, detail=detail)  # type: ignore[arg-type]
        return Response(ok=True, backend=self.name, event=event,
                        readiness=self._readiness(rt, event.observedAt, detail),
                        runtime={**vm.ids(), "bootSeconds": runtime.bootSeconds,
                                 "vmmSeconds": runtime.vmmSeconds, "controlSocket": str(rt.control_socket)})

    def run(self, request: Request) -> Response:
        """Foreground: boot, run ``request.exec``, power off, answer the result."""
        from microagent.channel import ExecRequest, open_channel
        from microagent.channel import exec as guest_exec

        if request.exec is None:
            raise Permanent("run needs an exec section naming the command to run")
        assert request.config is not None
        if request.config.readiness != "guest":
            raise Permanent("run needs the guest: config.readiness must be 'guest' for run",
                            "use start with readiness 'vmm' for process-model checks")
        rt, vm, _ = self._boot(request)
        spec = request.exec
        try:
            with open_channel(rt.control_socket, hello_timeout=10.0) as conn:
                result = guest_exec.run(conn, ExecRequest(argv=list(spec.argv), env=list(spec.env),
                                                          cwd=spec.cwd or None, user=spec.user or None,
                                                          timeout_s=spec.timeoutSeconds or None))
                conn.shutdown("poweroff", grace_s=2.0)
        except MicroagentError as exc:
            self._teardown(rt, kill_vm=True)
            self.record(rt, request, S.FAILED, exc.message)
            raise
        result_doc = result.to_dict()
        write_json_atomic(rt.result_json, result_doc)
        if not vm.wait_gone(HALT_TIMEOUT_S):
            self._kill(vm)
        self._teardown(rt, kill_vm=False)
        event = self.record(rt, request, S.STOPPED, "powered_off")
        return Response(ok=True, backend=self.name, event=event, result=result_doc)

    def inspect(self, request: Request) -> Response:
        rt = self.runtime_dir(request)
        runtime = rt.runtime()
        if runtime is None:
            raise NotFound(f"workspace {self._name(request)} has no runtime state", "create or start it first")
        state = runtime.state
        vm = self.vm_handle(rt, runtime)
        alive = vm is not None and vm.alive()
        detail = {S.QUARANTINED: "quarantined: every host path into the guest is severed",
                  S.PAUSED: "paused: the vcpus are stopped; resume it first"}.get(state, "")
        if alive and state != S.QUARANTINED:
            self.revive_network(rt)  # a dead pasta was the guest's way out
        if not alive and self.live_helper(rt) is not None:
            self._teardown(rt, kill_vm=False)  # e.g. a "failed" stop whose VM died later
        if state in LIVE_STATES and not alive:
            self._teardown(rt, kill_vm=False)
            gone = vm.gone_detail(state.value) if vm else f"{self.name} (pid ?) exited while nobody watched"
            event = self.record(rt, request, S.FAILED, f"{gone}; serial tail: {rt.serial_tail(3)}")
        elif state == S.STARTING and alive and runtime.readiness == "vmm":
            # started without waiting for the guest: promote once the helper has its HELLO
            assert vm is not None
            helper_alive = self.live_helper(rt) is not None
            if helper_alive and self.control_ready(rt):
                event = self.record(rt, request, S.RUNNING, "guest init answered after a readiness=vmm start")
            else:
                event = Event(identity=request.identity, state=state.value,  # type: ignore[arg-type]
                              detail=self._vmm_only_detail(vm, helper_alive))
            detail = event.detail
        else:
            if state == S.RUNNING and alive and self.live_helper(rt) is None:
                self._respawn_helper(rt, runtime)
            event = Event(identity=request.identity, state=state.value,  # type: ignore[arg-type]
                          detail=self.state_detail(rt, vm))
        if alive and event.state in (S.RUNNING, S.STARTING, S.PAUSED):
            event = self._reconcile_pause(rt, request, runtime, event)
            detail = event.detail if event.state == S.PAUSED else detail
        info = self.runtime_info(rt, runtime, vm, alive)
        readiness = (self._readiness(rt, event.observedAt, detail, S.parse(event.state)) if alive else None)
        return Response(ok=True, backend=self.name, event=event, readiness=readiness, runtime=info)

    def _respawn_helper(self, rt: RuntimeDir, runtime: RuntimeRecord) -> None:
        """A new helper takes over the channel of a running VM whose helper died."""
        rt.control_socket.unlink(missing_ok=True)  # the dead helper's socket
        listeners = self.published_listeners(runtime)  # its published ports died with it
        try:
            self.spawn_helper(rt, runtime, 10.0, listeners)
        finally:
            for sock, _ in listeners:
                sock.close()
        wait_until(lambda: self.control_ready(rt), 10.0, 0.02)

    def _reconcile_pause(self, rt: RuntimeDir, request: Request, runtime: RuntimeRecord,
                         event: Event) -> Event:
        """The VMM's word over the record: a VM it paused on its own reads ``paused`` with
        the reason (recorded if the disk lets us); one running again reads as before."""
        live = self.run_status(rt)
        if live is None:
            return event
        reason = live.get("reason")
        if reason:
            detail = paused_detail(self._name(request), reason)
            if event.state == S.PAUSED and runtime.pausedReason == reason:
                return structs.replace(event, detail=detail)
            paused_from = runtime.pausedFrom if event.state == S.PAUSED else S.parse(event.state)
            return self.record(rt, request, S.PAUSED, detail, pausedFrom=paused_from or S.RUNNING,
                               pausedReason=reason)
        if event.state == S.PAUSED and runtime.pausedReason and live.get("running"):
            back = runtime.pausedFrom or S.RUNNING
            return self.record(rt, request, back, "the VM runs again", pausedFrom=None, pausedReason=None)
        return event

    def _require_live(self, request: Request, verb: str) -> tuple[RuntimeDir, VMHandle]:
        rt = self.runtime_dir(request)
        vm = self.live_vm(rt)
        if vm is None:
            raise Conflict(f"workspace {self._name(request)} is not running "
                           f"(state {rt.recorded_state()}); nothing to {verb}")
        return rt, vm

    def halt(self, request: Request) -> Response:
        from microagent.channel import open_channel

        rt, vm = self._require_live(request, "halt")
        name = self._name(request)
        if rt.recorded_state() == S.QUARANTINED:
            raise Conflict(f"workspace {name} is quarantined; its channel is severed", "use stop or kill")
        live = self.run_status(rt)
        if live is not None and live.get("reason"):
            raise Conflict(f"workspace {name} is {paused_detail(name, live['reason'])}",
                           "halt needs a running guest: resume it first, or use stop or kill")
        if rt.recorded_state() == S.STARTING and not self.control_ready(rt):
            raise Conflict(f"workspace {name} is starting: guest init has not answered, so it cannot be "
                           "halted through it", "use stop or kill")
        try:
            runtime = rt.runtime() or RuntimeRecord()
            stop_signal = int((runtime.config or {}).get("stopSignal") or 15)
            with open_channel(rt.control_socket, hello_timeout=5.0, connect_timeout=5.0) as conn:
                conn.shutdown("poweroff", grace_s=HALT_GRACE_S, signal=stop_signal)
        except MicroagentError as exc:
            self.record(rt, request, S.FAILED, f"halt could not reach guest init: {exc.message}")
            raise Transient(f"halt could not reach guest init: {exc.message}; the VM is still running "
                            f"({vm.label})", "use stop or kill") from exc
        if not vm.wait_gone(HALT_TIMEOUT_S):
            self.record(rt, request, S.FAILED, f"guest did not power off within {HALT_TIMEOUT_S:.0f}s")
            raise Transient(f"guest did not power off within {HALT_TIMEOUT_S:.0f}s; {vm.label} was left running",
                            "use stop or kill")
        self._teardown(rt, kill_vm=False)
        return Response(ok=True, backend=self.name, event=self.record(rt, request, S.HALTED, "guest powered off"))

    def stop(self, request: Request) -> Response:
        rt, vm = self._require_live(request, "stop")
        try:
            vm.stop(STOP_GRACE_S)
        except MicroagentError as exc:
            if vm.alive():
                self.record(rt, request, S.FAILED, f"{vm.stop_call} failed: {exc.message}")
                raise Transient(f"{vm.label} did not accept {vm.stop_call}: {exc.message}", "use kill") from exc
        if not vm.wait_gone(STOP_GRACE_S):
            self.record(rt, request, S.FAILED, f"{vm.label} survived {vm.stop_call} for {STOP_GRACE_S:.0f}s")
            raise Transient(f"{vm.label} is still alive {STOP_GRACE_S:.0f}s after {vm.stop_call}", "use kill")
        self._teardown(rt, kill_vm=False)
        return Response(ok=True, backend=self.name, event=self.record(rt, request, S.STOPPED, vm.stop_call))

    def kill(self, request: Request) -> Response:
        rt, vm = self._require_live(request, "kill")
        vm.kill()
        if not vm.wait_gone(KILL_WAIT_S):
            raise Transient(f"{vm.label} survived {vm.kill_call}", "check the process table")
        self._teardown(rt, kill_vm=False)
        return Response(ok=True, backend=self.name, event=self.record(rt, request, S.STOPPED, vm.kill_call))

    def quarantine(self, request: Request) -> Response:
        rt, vm = self._require_live(request, "quarantine")
        severed = []
        helper = self.live_helper(rt)
        if helper is not None:
            helper.kill()
            severed.append("channel helper")
        if rt.control_socket.exists():
            rt.control_socket.unlink()
            severed.append(rt.control_socket.name)
        severed += self.sever(rt)
        severed += self.detach_network(rt, self._name(request))  # TAP and firewall rules, HNS endpoint
        self.watch_serial(rt, vm)
        event = self.record(rt, request, S.QUARANTINED,
                            f"severed: {', '.join(severed) or 'nothing left'}; {vm.ident} kept")
        return Response(ok=True, backend=self.name, event=event, runtime={**vm.ids(), "alive": True})

    def pause(self, request: Request) -> Response:
        rt, vm = self._require_live(request, "pause")
        runtime = rt.runtime() or RuntimeRecord()
        state = runtime.state
        # a readiness=vmm start leaves a live VM in "starting": pausable too
        vmm_only = state == S.STARTING and runtime.readiness == "vmm"
        if state != S.RUNNING and not vmm_only:
            raise Conflict(f"workspace {self._name(request)} is {state}; only running "
                           "workspaces can be paused")
        vm.pause()
        return Response(ok=True, backend=self.name,
                        event=self.record(rt, request, S.PAUSED, "vcpus stopped", pausedFrom=state))

    def resume(self, request: Request) -> Response:
        rt, vm = self._require_live(request, "resume")
        live = self.run_status(rt)
        paused_on_its_own = live is not None and bool(live.get("reason"))
        if rt.recorded_state() != S.PAUSED and not paused_on_its_own:
            raise Conflict(f"workspace {self._name(request)} is {rt.recorded_state()}, not paused")
        vm.resume()
        runtime = rt.runtime() or RuntimeRecord()
        back = (runtime.pausedFrom if runtime.state == S.PAUSED else runtime.state) or S.RUNNING
        return Response(ok=True, backend=self.name,
                        event=self.record(rt, request, back, "vcpus resumed", pausedFrom=None,
                                          pausedReason=None))

    def snapshot(self, request: Request) -> Response:
        if not self.supports_snapshots:
            raise self._unsupported("snapshot")
        rt, vm = self._require_live(request, "snapshot")
        state = rt.recorded_state()
        if state not in (S.RUNNING, S.PAUSED):
            raise Conflict(f"workspace {self._name(request)} is {state}; only a running or paused "
                           "workspace can be snapshotted")
        assert request.snapshot is not None
        started = time.monotonic()
        info = self.save_vm(rt, Path(request.snapshot.path), resume=state == S.RUNNING)
        event = Event(identity=request.identity, state=state.value,  # type: ignore[arg-type]
                      detail=f"snapshot saved in {time.monotonic() - started:.3f}s")
        return Response(ok=True, backend=self.name, event=event, runtime={**vm.ids(), **info})

    def delete(self, request: Request) -> Response:
        rt = self.runtime_dir(request)
        vm = self.live_vm(rt)
        name = self._name(request)
        if vm is not None:
            raise Conflict(f"workspace {name} is running ({vm.label}); "
                           "stop or kill it before delete", "use kill, or delete -f")
        self._teardown(rt, kill_vm=False)
        assert request.config is not None and request.identity is not None
        ws = workspace_dir(Path(request.config.stateDir), name)
        existed = rt.path.exists() or ws.exists()
        shutil.rmtree(rt.path, ignore_errors=True)
        shutil.rmtree(ws, ignore_errors=True)
        self.release_network(Path(request.config.stateDir), name)
        event = Event(identity=request.identity, state=S.UNKNOWN.value, detail="deleted" if existed else "absent")
        return Response(ok=True, backend=self.name, event=event)
