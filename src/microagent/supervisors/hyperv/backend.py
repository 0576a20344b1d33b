"""The Hyper-V backend: Linux guests as HCS compute systems (experimental).

How the process model (docs/supervisor-api.md, "Process model") maps onto
HCS, where a VM has no host process of ours:

- **the compute system ID plays the PID's role.**  ``start`` creates the
  compute system ``microagent-<name>-<hash>`` (:func:`.documents.compute_system_id`)
  and records it, with its ``RuntimeId`` (the Hyper-V socket VmId), in
  ``runtime.json``.  "Alive" means HCS reports the ID in state ``Created``,
  ``Running`` or ``Paused``; ``HCS_E_SYSTEM_NOT_FOUND`` or ``Stopped`` means
  gone.  IDs are never reused for another VM while one exists
  (``HCS_E_SYSTEM_ALREADY_EXISTS``), which is what the PID start time buys on Linux.
- ``stop`` = ``HcsShutdownComputeSystem`` (the guest's shutdown integration
  component, ``hv_utils``: the SIGTERM analogue), a grace period, then
  ``failed`` if the system is still there — never a silent terminate.
- ``kill`` = ``HcsTerminateComputeSystem`` (the SIGKILL analogue).
- ``halt`` = power-off through guest init over the channel.
- ``quarantine`` = kill the helper (channel, published ports, serial reader),
  delete the HNS endpoint (the NIC loses its network), remove the control
  endpoint; the compute system keeps running under the same ID.
- ``delete`` refuses while the compute system exists.

The channel helper (:mod:`.helper`) is the one host process per workspace;
it is tracked like the router on Linux (:mod:`.helpers`).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from microagent.errors import Conflict, MicroagentError, NotFound, Permanent, Transient, Unsupported
from microagent.supervisors.base import Backend
from microagent.supervisors.hyperv import documents as docs
from microagent.supervisors.hyperv.hcs import ComputeCore, HcsApi
from microagent.supervisors.hyperv.helpers import HelperLauncher, default_launcher
from microagent.runtime_state import RuntimeDir, locate_runtime_dir, read_json, write_json_atomic
from microagent.vmkit.types import Event, Request, Response, now_rfc3339, to_wire

STOP_GRACE_S = 5.0
HALT_TIMEOUT_S = 15.0
HCS_TIMEOUT_S = 60.0
POLL_S = 0.05
CONFIG_DISK_BYTES = 64 * 1024
LIVE_HCS_STATES = ("Created", "Running", "Paused")
VHD_SUFFIXES = (".vhd", ".vhdx")


class HyperVBackend(Backend):
    """The ``windows-hyperv`` supervisor commands.

    :param hcs: the HCS/HCN seam (:class:`~.hcs.ComputeCore` by default; tests pass ``FakeHcs``).
    :param helpers: starts and tracks the channel helper process.
    """

    name = "windows-hyperv"

    def __init__(self, hcs: HcsApi | None = None, helpers: HelperLauncher | None = None) -> None:
        self.hcs: HcsApi = hcs if hcs is not None else ComputeCore()
        self.helpers = helpers if helpers is not None else default_launcher()

    # --- paths and state ---------------------------------------------------------

    def _rt(self, request: Request) -> RuntimeDir:
        assert request.config is not None and request.identity is not None
        return RuntimeDir(locate_runtime_dir(Path(request.config.stateDir), request.identity.runtimeID))

    def _name(self, request: Request) -> str:
        assert request.identity is not None
        return request.identity.runtimeID

    def _system_id(self, request: Request) -> str:
        assert request.config is not None
        recorded = (self._rt(request).runtime() or {}).get("systemId")
        return str(recorded) if recorded else docs.compute_system_id(request.config.stateDir, self._name(request))

    def _workspace_dir(self, request: Request) -> Path:
        assert request.config is not None
        return Path(request.config.stateDir) / "workspaces" / self._name(request)

    def record(self, rt: RuntimeDir, request: Request, state: str, detail: str = "", **updates: Any) -> Event:
        assert request.identity is not None
        return rt.record(request.identity, state, detail, **updates)

    def recorded_state(self, rt: RuntimeDir) -> str:
        return str((rt.runtime() or {}).get("state", "unknown"))

    def hcs_state(self, system_id: str) -> str:
        """HCS's ``State`` of ``system_id``; ``"Absent"`` when HCS does not know it."""
        try:
            props = self.hcs.get_compute_system_properties(system_id, "", HCS_TIMEOUT_S)
        except NotFound:
            return "Absent"
        return str(props.get("State", "Unknown"))

    def alive(self, system_id: str) -> bool:
        return self.hcs_state(system_id) in LIVE_HCS_STATES

    def _wait_gone(self, system_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive(system_id):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _control_ready(self, rt: RuntimeDir) -> bool:
        return rt.control_socket.exists() or (rt.path / "control.json").exists()

    # --- commands ---------------------------------------------------------------------

    def host(self, request: Request) -> Response:
        try:
            self.hcs.get_compute_system_properties("microagent-host-probe", "", 10.0)
            api_error = ""
        except NotFound:
            api_error = ""  # HCS answered: the API works
        except MicroagentError as exc:
            api_error = exc.message
        doc = {
            "backend": self.name, "os": "windows", "architecture": platform.machine().lower() or "unknown",
            "api": "computecore.dll (HCS), computenetwork.dll (HNS)",
            "virtualizationSupported": not api_error, "hcsAvailable": not api_error, "hcsError": api_error,
            "guestChannel": f"hvsock:{docs.service_id(docs.CHANNEL_PORT)}",
            "vsockAvailable": hasattr(__import__("socket"), "AF_HYPERV"),
            "consoleAvailable": False, "consoleMode": "unsupported: use 'microagent connect'",
            "networkModes": ["isolated", "user", "nat"], "natNetwork": f"{docs.NAT_NETWORK_NAME} {docs.NAT_SUBNET}",
            "experimental": True,
        }
        return Response(ok=True, backend=self.name, host=doc)

    def _preflight(self, request: Request) -> None:
        cfg = request.config
        assert cfg is not None
        for label, path in (("kernel", cfg.kernelPath), ("rootfs", cfg.rootfsPath), ("initrd", cfg.initrdPath)):
            if path and not Path(path).is_file():
                raise NotFound(f"{label} {path} does not exist",
                               "run 'microagent kernel install --backend windows-hyperv'"
                               if label != "rootfs" else "create the workspace first")
        for disk in cfg.disks:
            if not disk.path.lower().endswith(VHD_SUFFIXES):
                raise Unsupported(f"disk {disk.name} at {disk.path} is not a VHD/VHDX; Hyper-V attaches only "
                                  "virtual disk files", "convert it (e.g. qemu-img convert -O vpc) or use another backend")
            if not Path(disk.path).is_file():
                raise NotFound(f"disk {disk.name} at {disk.path} does not exist")

    def check(self, request: Request) -> Response:
        self._preflight(request)
        return self.event(request, "unknown", "check passed")

    def _rootfs_vhd(self, request: Request, rt: RuntimeDir) -> Path:
        """``workspaces/<name>/rootfs.vhd``, converted from the ext4 seed when it is missing or the seed changed."""
        from microagent.images.vhd import raw_to_fixed_vhd

        assert request.config is not None
        seed = Path(request.config.rootfsPath)
        vhd = self._workspace_dir(request) / "rootfs.vhd"
        st = seed.stat()
        stamp = {"path": str(seed), "size": st.st_size, "mtimeNs": st.st_mtime_ns}
        if not vhd.exists() or (rt.runtime() or {}).get("rootfsSeed") != stamp:
            raw_to_fixed_vhd(seed, vhd)
            runtime = rt.runtime() or {}
            runtime["rootfsSeed"] = stamp
            rt.write_runtime(runtime)
        return vhd

    def prepare(self, request: Request) -> Response:
        self._preflight(request)
        rt = self._rt(request)
        system_id = self._system_id(request)
        if self.alive(system_id):
            raise Conflict(f"workspace {self._name(request)} is running (compute system {system_id}); stop it first")
        rt.create()
        vhd = self._rootfs_vhd(request, rt)
        event = self.record(rt, request, "prepared", f"rootfs={vhd}", backend=self.name,
                            config=to_wire(request.config), systemId=system_id)
        return Response(ok=True, backend=self.name, event=event)

    def _attach_network(self, request: Request, rt: RuntimeDir) -> tuple[docs.NetworkAttachment | None, str | None, int]:
        """The HNS endpoint for user/nat (both are HNS NAT here); nothing for isolated."""
        cfg = request.config
        assert cfg is not None
        if cfg.network.mode == "isolated":
            write_json_atomic(rt.path / "network.json", {"mode": "isolated", "published": []})
            return None, None, docs.NAT_PREFIX
        self.hcs.ensure_network(docs.NAT_NETWORK_ID, json.dumps(docs.nat_network_document()))
        endpoint_id = str(uuid.uuid4())
        props = self.hcs.create_endpoint(docs.NAT_NETWORK_ID, endpoint_id,
                                         json.dumps(docs.endpoint_document(docs.NAT_NETWORK_ID, self._name(request))))
        write_json_atomic(rt.path / "network.json", {"mode": cfg.network.mode, "endpointId": endpoint_id,
                                                     "network": docs.NAT_NETWORK_NAME, "published": [
                                                         {"host": f.host, "hostPort": f.hostPort,
                                                          "guestPort": f.guestPort, "protocol": "tcp"}
                                                         for f in cfg.network.portForwards]})
        try:
            ip, prefix, mac = docs.endpoint_address(props)
        except ValueError as exc:
            self._detach_network(rt)
            raise Permanent(f"HNS endpoint {endpoint_id}: {exc}", "see 'Get-HnsEndpoint' output") from exc
        write_json_atomic(rt.path / "network.json", {**(read_json(rt.path / "network.json") or {}),
                                                     "address": ip, "prefix": prefix, "mac": mac})
        return docs.NetworkAttachment(endpoint_id, mac), ip, prefix

    def _detach_network(self, rt: RuntimeDir) -> list[str]:
        recorded = read_json(rt.path / "network.json") or {}
        endpoint = recorded.get("endpointId")
        if not endpoint:
            return []
        try:
            self.hcs.delete_endpoint(str(endpoint))
        except NotFound:
            pass
        recorded.pop("endpointId", None)
        write_json_atomic(rt.path / "network.json", recorded)
        return [f"HNS endpoint {endpoint}"]

    def _config_vhd(self, request: Request, rt: RuntimeDir, ip: str | None, prefix: int) -> Path:
        """The per-boot config disk (JSON, NUL-padded) as a fixed VHD."""
        from microagent.images.vhd import raw_to_fixed_vhd

        cfg = request.config
        assert cfg is not None
        body = json.dumps({"hostname": cfg.hostname or self._name(request), "env": list(cfg.env),
                           "network": docs.guest_network_config(ip, prefix)}).encode()
        if len(body) >= CONFIG_DISK_BYTES:
            raise Permanent(f"the per-boot config ({len(body)} bytes) does not fit the 64 KiB config disk",
                            "pass fewer or shorter -e values")
        raw = rt.path / "config.disk"
        raw.write_bytes(body + b"\0" * (CONFIG_DISK_BYTES - len(body)))
        return raw_to_fixed_vhd(raw, rt.path / "config.vhd")

    def _spec(self, request: Request, system_id: str, rootfs: Path, config_vhd: Path,
              network: docs.NetworkAttachment | None) -> docs.VmSpec:
        cfg = request.config
        assert cfg is not None
        return docs.VmSpec(
            system_id=system_id, kernel_path=cfg.kernelPath, initrd_path=cfg.initrdPath,
            rootfs_vhd=str(rootfs), config_vhd=str(config_vhd), hostname=cfg.hostname or self._name(request),
            memory_mib=cfg.memoryMiB, cpu_count=cfg.cpuCount, kernel_args=cfg.kernelArgs,
            extra_disks=tuple(docs.DiskAttachment(d.path, d.mode == "ro") for d in cfg.disks),
            network=network)

    def _helper_argv(self, request: Request, rt: RuntimeDir, vm_id: str, hello_timeout: float) -> list[str]:
        cfg = request.config
        assert cfg is not None
        argv = [sys.executable, "-m", "microagent.supervisors.hyperv.helper", "--vm-id", vm_id,
                "--port", str(docs.CHANNEL_PORT), "--listen", str(rt.control_socket),
                "--hello-timeout", f"{max(hello_timeout, 0.1):.3f}",
                "--serial-pipe", docs.com_pipe(self._system_id(request)), "--serial-log", str(rt.serial_log)]
        for f in cfg.network.portForwards:
            argv += ["--publish", f"{f.host}:{f.hostPort}:{f.guestPort}"]
        return argv

    def _boot(self, request: Request) -> tuple[RuntimeDir, str, bool]:
        self._preflight(request)
        cfg = request.config
        assert cfg is not None
        rt, name = self._rt(request), self._name(request)
        system_id = self._system_id(request)
        if self.recorded_state(rt) == "quarantined":
            raise Conflict(f"workspace {name} is quarantined", "stop or kill it before starting it again")
        if self.alive(system_id):
            raise Conflict(f"workspace {name} is already running (compute system {system_id})",
                           "stop, kill or halt it first")
        rt.create()
        for stale in ("control.sock", "control.json"):
            (rt.path / stale).unlink(missing_ok=True)
        started = time.monotonic()
        deadline = started + cfg.timeoutSeconds
        rootfs = self._rootfs_vhd(request, rt)
        network, ip, prefix = self._attach_network(request, rt)
        created = False
        try:
            config_vhd = self._config_vhd(request, rt, ip, prefix)
            document = docs.compute_system_document(self._spec(request, system_id, rootfs, config_vhd, network))
            write_json_atomic(rt.path / "hcs-document.json", document)
            with open(rt.serial_log, "ab") as log:
                log.write(f"\n[microagent] boot {now_rfc3339()} backend={self.name}\n".encode())
            for path in (cfg.kernelPath, cfg.initrdPath, str(rootfs), str(config_vhd), *(d.path for d in cfg.disks)):
                if path:
                    self.hcs.grant_vm_access(system_id, path)
            self.hcs.create_compute_system(system_id, json.dumps(document), HCS_TIMEOUT_S)
            created = True
            self.record(rt, request, "starting", f"compute system {system_id}", backend=self.name,
                        systemId=system_id, vmId=None, config=to_wire(cfg), startedAt=now_rfc3339(),
                        serialLogPath=str(rt.serial_log), controlSocket=str(rt.control_socket),
                        helper=None, readiness=cfg.readiness, bootSeconds=None)
            self.hcs.start_compute_system(system_id, HCS_TIMEOUT_S)
            props = self.hcs.get_compute_system_properties(system_id, "", HCS_TIMEOUT_S)
            vm_id = str(props.get("RuntimeId") or "")
            if not vm_id:
                raise Permanent(f"HCS reported no RuntimeId for {system_id}; cannot reach its Hyper-V sockets")
            helper = self.helpers.spawn(
                self._helper_argv(request, rt, vm_id,
                                  cfg.timeoutSeconds if cfg.readiness == "vmm" else deadline - time.monotonic()),
                cwd=rt.path, log_path=rt.path / "helper.log")
            self.record(rt, request, "starting", f"compute system {system_id}", vmId=vm_id, helper=helper)
            if cfg.readiness == "vmm":
                return rt, system_id, False
            self._wait_ready(rt, system_id, helper, deadline)
        except BaseException as exc:
            self._teardown(rt, terminate=system_id if created else None)
            if not created:
                self._detach_network(rt)
            message = exc.message if isinstance(exc, MicroagentError) else str(exc)
            self.record(rt, request, "failed", message)
            raise
        self.record(rt, request, "running", f"compute system {system_id}",
                    bootSeconds=round(time.monotonic() - started, 3))
        return rt, system_id, True

    def _wait_ready(self, rt: RuntimeDir, system_id: str, helper: dict[str, Any], deadline: float) -> None:
        while not self._control_ready(rt):
            if not self.helpers.alive(helper):
                raise Permanent(f"the channel helper gave up before guest init answered; serial log tail:\n"
                                f"{rt.serial_tail()}", "see helper.log and serial.log")
            if not self.alive(system_id):
                raise Permanent(f"compute system {system_id} stopped before guest init answered; serial log "
                                f"tail:\n{rt.serial_tail()}", "see serial.log")
            if time.monotonic() >= deadline:
                raise Transient(f"guest init did not answer within the boot timeout; serial log tail:\n"
                                f"{rt.serial_tail()}", "raise --boot-timeout or check the kernel and initramfs")
            time.sleep(POLL_S)

    def _teardown(self, rt: RuntimeDir, *, terminate: str | None = None) -> list[str]:
        severed = []
        helper = (rt.runtime() or {}).get("helper")
        if helper and self.helpers.alive(helper):
            self.helpers.kill(helper)
            severed.append("channel helper")
        for name in ("control.sock", "control.json"):
            if (rt.path / name).exists():
                (rt.path / name).unlink()
                severed.append(name)
        if terminate is not None:
            try:
                self.hcs.terminate_compute_system(terminate, HCS_TIMEOUT_S)
            except (NotFound, Conflict):
                pass
        if terminate is not None or not self.alive(self._recorded_id(rt)):
            severed += self._detach_network(rt)
        return severed

    def _recorded_id(self, rt: RuntimeDir) -> str:
        return str((rt.runtime() or {}).get("systemId") or "")

    def _readiness(self, rt: RuntimeDir, observed_at: str) -> dict[str, Any]:
        ready = {"ready": self._control_ready(rt) and self.recorded_state(rt) != "paused", "observedAt": observed_at}
        return {"guestReady": ready, "execReady": dict(ready), "shellReady": dict(ready)}

    def start(self, request: Request) -> Response:
        rt, system_id, ready = self._boot(request)
        runtime = rt.runtime() or {}
        event = Event(identity=request.identity, state="running" if ready else "starting",  # type: ignore[arg-type]
                      detail=f"compute system {system_id}")
        return Response(ok=True, backend=self.name, event=event, readiness=self._readiness(rt, event.observedAt),
                        runtime={"systemId": system_id, "vmId": runtime.get("vmId"),
                                 "bootSeconds": runtime.get("bootSeconds"), "controlSocket": str(rt.control_socket)})

    def run(self, request: Request) -> Response:
        from microagent.channel import ExecRequest, open_channel

        if request.exec is None:
            raise Permanent("run needs an exec section naming the command to run")
        assert request.config is not None
        if request.config.readiness != "guest":
            raise Permanent("run needs the guest: config.readiness must be 'guest' for run")
        rt, system_id, _ = self._boot(request)
        spec = request.exec
        try:
            with open_channel(rt.control_socket, hello_timeout=10.0) as conn:
                result = conn.exec(ExecRequest(argv=list(spec.argv), env=list(spec.env), cwd=spec.cwd or None,
                                               user=spec.user or None, timeout_s=spec.timeoutSeconds or None))
                conn.shutdown("poweroff", grace_s=2.0)
        except MicroagentError as exc:
            self._teardown(rt, terminate=system_id)
            self.record(rt, request, "failed", exc.message)
            raise
        result_doc = result.to_dict()
        write_json_atomic(rt.result_json, result_doc)
        if not self._wait_gone(system_id, HALT_TIMEOUT_S):
            self.hcs.terminate_compute_system(system_id, HCS_TIMEOUT_S)
        self._teardown(rt)
        event = self.record(rt, request, "stopped", "powered_off")
        return Response(ok=True, backend=self.name, event=event, result=result_doc)

    def inspect(self, request: Request) -> Response:
        rt = self._rt(request)
        runtime = rt.runtime()
        if runtime is None:
            raise NotFound(f"workspace {self._name(request)} has no runtime state", "create or start it first")
        state = str(runtime.get("state", "unknown"))
        system_id = self._system_id(request)
        hcs_state = self.hcs_state(system_id)
        alive = hcs_state in LIVE_HCS_STATES
        if state in ("starting", "running", "quarantined", "paused", "stopping") and not alive:
            self._teardown(rt)
            event = self.record(rt, request, "failed", f"compute system {system_id} is {hcs_state} but was {state}; "
                                f"serial tail: {rt.serial_tail(3)}")
        elif state == "starting" and alive and self._control_ready(rt):
            event = self.record(rt, request, "running", "guest init answered after a readiness=vmm start")
        else:
            event = Event(identity=request.identity, state=state, detail=f"compute system {system_id}: {hcs_state}")  # type: ignore[arg-type]
        helper = (rt.runtime() or {}).get("helper")
        info = {"systemId": system_id, "vmId": runtime.get("vmId"), "hcsState": hcs_state, "alive": alive,
                "helperAlive": bool(helper and self.helpers.alive(helper)), "serialLogPath": str(rt.serial_log),
                "controlSocket": str(rt.control_socket), "startedAt": runtime.get("startedAt"),
                "bootSeconds": runtime.get("bootSeconds")}
        return Response(ok=True, backend=self.name, event=event,
                        readiness=self._readiness(rt, event.observedAt) if alive else None, runtime=info)

    def _require_live(self, request: Request, verb: str) -> tuple[RuntimeDir, str]:
        rt = self._rt(request)
        system_id = self._system_id(request)
        if not self.alive(system_id):
            raise Conflict(f"workspace {self._name(request)} is not running (state {self.recorded_state(rt)}); "
                           f"nothing to {verb}")
        return rt, system_id

    def connect(self, request: Request) -> Response:
        """The supervisor has no console of its own on Hyper-V: fail closed."""
        raise Unsupported("the windows-hyperv supervisor has no direct console; use 'microagent connect'",
                          f"microagent connect {self._name(request)}")

    console = connect

    def halt(self, request: Request) -> Response:
        from microagent.channel import open_channel

        rt, system_id = self._require_live(request, "halt")
        name = self._name(request)
        if self.recorded_state(rt) == "quarantined":
            raise Conflict(f"workspace {name} is quarantined; its channel is severed", "use stop or kill")
        if not rt.control_socket.exists():
            raise Conflict(f"workspace {name}: guest init is not reachable over the channel", "use stop or kill")
        try:
            with open_channel(rt.control_socket, hello_timeout=5.0, connect_timeout=5.0) as conn:
                conn.shutdown("poweroff", grace_s=5.0)
        except MicroagentError as exc:
            self.record(rt, request, "failed", f"halt could not reach guest init: {exc.message}")
            raise Transient(f"halt could not reach guest init: {exc.message}; compute system {system_id} is "
                            "still running", "use stop or kill") from exc
        if not self._wait_gone(system_id, HALT_TIMEOUT_S):
            self.record(rt, request, "failed", f"guest did not power off within {HALT_TIMEOUT_S:.0f}s")
            raise Transient(f"guest did not power off within {HALT_TIMEOUT_S:.0f}s; compute system {system_id} "
                            "was left running", "use stop or kill")
        self._teardown(rt)
        return Response(ok=True, backend=self.name, event=self.record(rt, request, "halted", "guest powered off"))

    def stop(self, request: Request) -> Response:
        rt, system_id = self._require_live(request, "stop")
        try:
            self.hcs.shutdown_compute_system(system_id, STOP_GRACE_S)
        except MicroagentError as exc:
            if self.alive(system_id):
                self.record(rt, request, "failed", f"HcsShutdownComputeSystem failed: {exc.message}")
                raise Transient(f"compute system {system_id} did not accept a shutdown: {exc.message}",
                                "use kill") from exc
        if not self._wait_gone(system_id, STOP_GRACE_S):
            self.record(rt, request, "failed", f"compute system survived shutdown for {STOP_GRACE_S:.0f}s")
            raise Transient(f"compute system {system_id} is still running {STOP_GRACE_S:.0f}s after "
                            "HcsShutdownComputeSystem", "use kill")
        self._teardown(rt)
        return Response(ok=True, backend=self.name,
                        event=self.record(rt, request, "stopped", "HcsShutdownComputeSystem"))

    def kill(self, request: Request) -> Response:
        rt, system_id = self._require_live(request, "kill")
        try:
            self.hcs.terminate_compute_system(system_id, HCS_TIMEOUT_S)
        except Conflict:
            pass  # stopped on its own meanwhile
        if not self._wait_gone(system_id, 10.0):
            raise Transient(f"compute system {system_id} survived HcsTerminateComputeSystem", "check Hyper-V Manager")
        self._teardown(rt)
        return Response(ok=True, backend=self.name,
                        event=self.record(rt, request, "stopped", "HcsTerminateComputeSystem"))

    def quarantine(self, request: Request) -> Response:
        rt, system_id = self._require_live(request, "quarantine")
        severed = self._teardown(rt)
        severed += self._detach_network(rt)
        event = self.record(rt, request, "quarantined",
                            f"severed: {', '.join(severed) or 'nothing left'}; compute system {system_id} kept")
        return Response(ok=True, backend=self.name, event=event, runtime={"systemId": system_id, "alive": True})

    def pause(self, request: Request) -> Response:
        rt, system_id = self._require_live(request, "pause")
        state = self.recorded_state(rt)
        if state not in ("running", "starting"):
            raise Conflict(f"workspace {self._name(request)} is {state}; only running workspaces can be paused")
        self.hcs.pause_compute_system(system_id, HCS_TIMEOUT_S)
        return Response(ok=True, backend=self.name, event=self.record(rt, request, "paused", "vcpus stopped",
                                                                      pausedFrom=state))

    def resume(self, request: Request) -> Response:
        rt, system_id = self._require_live(request, "resume")
        if self.recorded_state(rt) != "paused":
            raise Conflict(f"workspace {self._name(request)} is {self.recorded_state(rt)}, not paused")
        self.hcs.resume_compute_system(system_id, HCS_TIMEOUT_S)
        back = str((rt.runtime() or {}).get("pausedFrom") or "running")
        return Response(ok=True, backend=self.name, event=self.record(rt, request, back, "vcpus resumed",
                                                                      pausedFrom=None))

    def delete(self, request: Request) -> Response:
        rt = self._rt(request)
        system_id = self._system_id(request)
        name = self._name(request)
        if self.alive(system_id):
            raise Conflict(f"workspace {name} is running (compute system {system_id}); stop or kill it before "
                           "delete", "use kill, or delete -f")
        self._teardown(rt)
        ws = self._workspace_dir(request)
        existed = rt.path.exists() or ws.exists()
        shutil.rmtree(rt.path, ignore_errors=True)
        shutil.rmtree(ws, ignore_errors=True)
        assert request.identity is not None
        return Response(ok=True, backend=self.name, event=Event(identity=request.identity, state="unknown",
                                                                detail="deleted" if existed else "absent"))

