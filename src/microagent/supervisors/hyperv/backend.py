"""The Hyper-V backend: Linux guests as HCS compute systems (experimental).

The lifecycle is :class:`~microagent.supervisors.vmm.VMMBackend`'s, the one
every backend shares; the VM is a compute system (:mod:`.system`: its ID
plays the PID's role) and this module supplies how HCS maps onto it
(docs/supervisor-api.md, "Process model"):

- ``start`` creates the compute system ``microagent-<name>-<hash>``
  (:func:`.documents.compute_system_id`) and records it, with its
  ``RuntimeId`` (the Hyper-V socket VmId), in ``runtime.json``;
- ``stop`` = ``HcsShutdownComputeSystem`` (the SIGTERM analogue), a grace
  period, then ``failed`` if the system is still there — never a silent terminate;
- ``kill`` = ``HcsTerminateComputeSystem`` (the SIGKILL analogue);
- ``halt`` = power-off through guest init over the channel, with the image's
  StopSignal and the halt grace, as on every backend;
- ``quarantine`` kills the helper (channel, published ports, serial reader),
  deletes the HNS endpoint (the NIC loses its network) and removes the
  control endpoint; the compute system keeps running under the same ID.

The channel helper (:mod:`.helper`) is the one host process per workspace;
it is tracked through a :class:`~.helpers.HelperLauncher`.

Snapshots (:mod:`.snapshot`): ``save_vm`` saves the paused compute system
with ``HcsSaveComputeSystem``; a ``start`` with a snapshot creates the
system with ``RestoreState`` in its document, and the shared lifecycle makes
the guest whole over the channel as on every backend.
"""

from __future__ import annotations

import json
import platform
import sys
import uuid
from pathlib import Path
from typing import Any

from microagent.errors import MicroagentError, NotFound, Permanent, Unsupported
from microagent.network.plan import NetworkPlan
from microagent.runtime_state import RuntimeDir, RuntimeRecord, locate_runtime_dir, read_json, write_json_atomic
from microagent.supervisors import netattach
from microagent.supervisors.handle import HelperHandle
from microagent.supervisors.hyperv import documents as docs
from microagent.supervisors.hyperv import snapshot
from microagent.supervisors.hyperv.hcs import ComputeCore, HcsApi
from microagent.supervisors.hyperv.helpers import HelperLauncher, default_launcher
from microagent.supervisors.hyperv.system import HCS_TIMEOUT_S, ComputeSystemHandle, LaunchedHelper
from microagent.supervisors.vmm import BootContext, VMMBackend
from microagent.vmkit.types import Config, Request, Response, to_wire

CONFIG_DISK_BYTES = 64 * 1024
VHD_SUFFIXES = (".vhd", ".vhdx")
#: the helper's control endpoint on Windows (a TCP port), besides control.sock
CONTROL_JSON = "control.json"


class HyperVRuntimeDir(RuntimeDir, frozen=True):
    """The runtime directory, knowing the compute system ID the workspace's name gives."""

    system_id: str = ""


class HnsAttachment(netattach.Attachment):
    """The HNS endpoint of user/nat (both are HNS NAT here), or nothing for isolated."""

    nic: docs.NetworkAttachment | None = None
    ip: str | None = None
    prefix: int = docs.NAT_PREFIX


class HyperVBoot(BootContext):
    rootfs: Path | None = None
    config_vhd: Path | None = None
    nic: docs.NetworkAttachment | None = None


class HyperVBackend(VMMBackend):
    """The ``windows-hyperv`` supervisor commands.

    :param hcs: the HCS/HCN seam (:class:`~.hcs.ComputeCore` by default; tests pass ``FakeHcs``).
    :param helpers: starts and tracks the channel helper process.
    """

    name = "windows-hyperv"
    boot_files = (CONTROL_JSON,)
    supports_snapshots = True  # :mod:`.snapshot`

    def __init__(self, hcs: HcsApi | None = None, helpers: HelperLauncher | None = None) -> None:
        self.hcs: HcsApi = hcs if hcs is not None else ComputeCore()
        self.helpers = helpers if helpers is not None else default_launcher()

    # --- the compute system and its helper ------------------------------------------

    def runtime_dir(self, request: Request) -> HyperVRuntimeDir:
        assert request.config is not None and request.identity is not None
        name = request.identity.runtimeID
        return HyperVRuntimeDir(locate_runtime_dir(Path(request.config.stateDir), name),
                                system_id=docs.compute_system_id(request.config.stateDir, name))

    def vm_handle(self, rt: RuntimeDir, runtime: RuntimeRecord | None = None) -> ComputeSystemHandle:
        runtime = rt.runtime() if runtime is None else runtime
        recorded = runtime.systemId if runtime is not None else None
        assert recorded or isinstance(rt, HyperVRuntimeDir)
        return ComputeSystemHandle(self.hcs, recorded or rt.system_id,  # type: ignore[attr-defined]
                                   vm_id=runtime.vmId if runtime is not None else None)

    def helper(self, rt: RuntimeDir, runtime: RuntimeRecord | None = None) -> HelperHandle | None:
        runtime = rt.runtime() if runtime is None else runtime
        return LaunchedHelper(self.helpers, runtime.helper) if runtime is not None and runtime.helper else None

    def spawn_helper(self, rt: RuntimeDir, runtime: RuntimeRecord, hello_timeout: float,
                     listeners: list[Any], generation: int | None = None) -> HelperHandle:
        """The helper binds the published ports itself (``--publish``): ``listeners`` is empty."""
        assert runtime.systemId and runtime.vmId
        argv = [sys.executable, "-m", "microagent.supervisors.hyperv.helper", "--vm-id", runtime.vmId,
                "--port", str(docs.CHANNEL_PORT), "--listen", str(rt.control_socket),
                "--hello-timeout", f"{max(hello_timeout, 0.1):.3f}",
                "--serial-pipe", docs.com_pipe(runtime.systemId), "--serial-log", str(rt.serial_log)]
        if generation is not None:  # a restored guest's, handed to guest init in the helper's HELLO
            argv += ["--generation", str(generation)]
        for f in ((runtime.config or {}).get("network") or {}).get("portForwards") or ():
            argv += ["--publish", f"{f.get('host', '127.0.0.1')}:{f['hostPort']}:{f['guestPort']}"]
        from microagent.egress.runtime import helper_args

        argv += helper_args(rt.path, runtime.config or {})[1]  # the egress proxy rides in the helper
        ref = self.helpers.spawn(argv, cwd=rt.path, log_path=rt.path / "helper.log")
        rt.update_runtime(helper=ref)
        return LaunchedHelper(self.helpers, ref)

    def published_listeners(self, runtime: RuntimeRecord) -> list[Any]:
        return []

    def control_ready(self, rt: RuntimeDir) -> bool:
        return rt.control_socket.exists() or (rt.path / CONTROL_JSON).exists()

    def watch_serial(self, rt: RuntimeDir, vm: Any) -> None:
        """Nothing to cap: the serial pipe has no reader once the helper is gone."""

    def state_detail(self, rt: RuntimeDir, vm: Any) -> str:
        assert isinstance(vm, ComputeSystemHandle)
        return f"{vm.label}: {vm.hcs_state()}"

    def runtime_info(self, rt: RuntimeDir, runtime: RuntimeRecord, vm: Any, alive: bool) -> dict[str, Any]:
        assert isinstance(vm, ComputeSystemHandle)
        return {"systemId": vm.system_id, "vmId": runtime.vmId, "hcsState": vm.hcs_state(), "alive": alive,
                "helperAlive": self.live_helper(rt) is not None, "serialLogPath": str(rt.serial_log),
                "controlSocket": str(rt.control_socket), "startedAt": runtime.startedAt,
                "bootSeconds": runtime.bootSeconds}

    def revive_network(self, rt: RuntimeDir) -> None:
        """HNS keeps the endpoint: nothing of ours to restart."""

    def sever(self, rt: RuntimeDir) -> list[str]:
        control = rt.path / CONTROL_JSON
        if control.exists():
            control.unlink()
            return [CONTROL_JSON]
        return []

    def _workspace_dir(self, request: Request) -> Path:
        assert request.config is not None
        return Path(request.config.stateDir) / "workspaces" / self._name(request)

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

    def preflight(self, request: Request) -> HyperVBoot:
        cfg = request.config
        assert cfg is not None
        for label, path in (("kernel", cfg.kernelPath), ("rootfs", cfg.rootfsPath), ("initrd", cfg.initrdPath)):
            if path and not Path(path).is_file():
                raise NotFound(f"{label} {path} does not exist",
                               "run 'microagent kernel install --backend windows-hyperv'"
                               if label != "rootfs" else "create the workspace first")
        if cfg.shares:
            raise Unsupported("the windows-hyperv backend cannot share host folders with the guest",
                              "use the qemu backend for -v /host/dir:/guest/path")
        if cfg.network.egress is not None and cfg.network.egress.secrets:
            # the vault's socket is AF_UNIX with a peer-uid check (egress/vault.py): none on Windows
            raise Unsupported("the windows-hyperv backend cannot hand egress secrets to its proxy",
                              "drop --secret (the allowlist works), or use the qemu or firecracker backend")
        for disk in cfg.disks:
            if not disk.path.lower().endswith(VHD_SUFFIXES):
                raise Unsupported(f"disk {disk.name} at {disk.path} is not a VHD/VHDX; Hyper-V attaches only "
                                  "virtual disk files", "convert it (e.g. qemu-img convert -O vpc) or use another backend")
            if not Path(disk.path).is_file():
                raise NotFound(f"disk {disk.name} at {disk.path} does not exist")
        return HyperVBoot()

    def _rootfs_vhd(self, request: Request, rt: RuntimeDir) -> Path:
        """``workspaces/<name>/rootfs.vhd``, converted from the ext4 seed when it is missing or the seed changed."""
        from microagent.images.vhd import raw_to_fixed_vhd

        assert request.config is not None
        seed = Path(request.config.rootfsPath)
        vhd = self._workspace_dir(request) / "rootfs.vhd"
        st = seed.stat()
        stamp = {"path": str(seed), "size": st.st_size, "mtimeNs": st.st_mtime_ns}
        runtime = rt.runtime()
        if not vhd.exists() or runtime is None or runtime.rootfsSeed != stamp:
            raw_to_fixed_vhd(seed, vhd)
            rt.update_runtime(rootfsSeed=stamp)
        return vhd

    def on_prepare(self, request: Request, rt: RuntimeDir) -> tuple[str, dict[str, Any]]:
        vhd = self._rootfs_vhd(request, rt)
        return f"rootfs={vhd}", {"systemId": self.vm_handle(rt).system_id}

    # --- boot ---------------------------------------------------------------------------

    def attach_network(self, cfg: Config, rt: RuntimeDir, name: str) -> HnsAttachment:
        """The HNS endpoint for user/nat (both are HNS NAT here); nothing for isolated."""
        attachment = HnsAttachment(NetworkPlan(mode=cfg.network.mode))
        if cfg.network.mode == "isolated":
            write_json_atomic(rt.path / "network.json", {"mode": "isolated", "published": []})
            return attachment
        self.hcs.ensure_network(docs.NAT_NETWORK_ID, json.dumps(docs.nat_network_document()))
        endpoint_id = str(uuid.uuid4())
        props = self.hcs.create_endpoint(docs.NAT_NETWORK_ID, endpoint_id,
                                         json.dumps(docs.endpoint_document(docs.NAT_NETWORK_ID, name)))
        write_json_atomic(rt.path / "network.json", {"mode": cfg.network.mode, "endpointId": endpoint_id,
                                                     "network": docs.NAT_NETWORK_NAME, "published": [
                                                         {"host": f.host, "hostPort": f.hostPort,
                                                          "guestPort": f.guestPort, "protocol": "tcp"}
                                                         for f in cfg.network.portForwards]})
        try:
            ip, prefix, mac = docs.endpoint_address(props)
        except ValueError as exc:
            self.detach_network(rt, name)
            raise Permanent(f"HNS endpoint {endpoint_id}: {exc}", "see 'Get-HnsEndpoint' output") from exc
        write_json_atomic(rt.path / "network.json", {**(read_json(rt.path / "network.json") or {}),
                                                     "address": ip, "prefix": prefix, "mac": mac})
        attachment.nic, attachment.ip, attachment.prefix = docs.NetworkAttachment(endpoint_id, mac), ip, prefix
        return attachment

    def detach_network(self, rt: RuntimeDir, name: str) -> list[str]:
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

    def release_network(self, state_root: Path, name: str) -> None:
        """HNS leases nothing per workspace beyond the endpoint."""

    def prepare_boot(self, request: Request, rt: RuntimeDir, ctx: BootContext,
                     attachment: netattach.Attachment) -> Request:
        """The rootfs VHD (from the seed) and the per-boot config VHD."""
        assert isinstance(ctx, HyperVBoot) and isinstance(attachment, HnsAttachment)
        if request.snapshot is not None:  # before the seed becomes rootfs.vhd
            self._prepare_restore(request, attachment.nic)
        ctx.rootfs = self._rootfs_vhd(request, rt)
        ctx.config_vhd = self._config_vhd(request, rt, attachment.ip, attachment.prefix)
        ctx.nic = attachment.nic
        return request

    def _config_vhd(self, request: Request, rt: RuntimeDir, ip: str | None, prefix: int) -> Path:
        """The per-boot config disk (JSON, NUL-padded) as a fixed VHD."""
        from microagent.images.vhd import raw_to_fixed_vhd

        cfg = request.config
        assert cfg is not None
        env, proxy = cfg.env, None
        if cfg.network.egress is not None:  # the proxy port and variables, as on every backend
            from microagent.egress import runtime as egress_runtime

            env, proxy = egress_runtime.prepare(rt.path, cfg.network.egress, cfg.env)
        body = json.dumps({"hostname": cfg.hostname or self._name(request), "env": list(env),
                           "network": docs.guest_network_config(ip, prefix),
                           **({"proxy": proxy} if proxy else {}),
                           **({"service": to_wire(cfg.service)} if cfg.service else {})}).encode()
        if len(body) >= CONFIG_DISK_BYTES:
            raise Permanent(f"the per-boot config ({len(body)} bytes) does not fit the 64 KiB config disk",
                            "pass fewer or shorter -e values")
        raw = rt.path / "config.disk"
        raw.write_bytes(body + b"\0" * (CONFIG_DISK_BYTES - len(body)))
        return raw_to_fixed_vhd(raw, rt.path / "config.vhd")

    def _prepare_restore(self, request: Request, nic: docs.NetworkAttachment | None) -> None:
        """Refuse another Windows build or device layout; an in-place restore takes the
        snapshot's disk as the seed (a fork's was copied when it was created)."""
        assert request.snapshot is not None and request.config is not None
        source = Path(request.snapshot.path)
        layout = docs.device_layout(docs.compute_system_document(self._spec(
            request, docs.compute_system_id(request.config.stateDir, self._name(request)),
            Path("rootfs.vhd"), Path("config.vhd"), nic)))
        self.refuse_incompatible(request, self.hcs.host_version(), layout, snapshot.WHY_VERSION)
        if not (source / snapshot.STATE_FILE).is_file():
            raise NotFound(f"the snapshot {source} has no {snapshot.STATE_FILE} file",
                           "take a new snapshot after a cold start")
        if not request.snapshot.private:
            from microagent.images.ext4 import copy_disk

            copy_disk(source / snapshot.DISK_FILE, Path(request.config.rootfsPath))

    def save_vm(self, rt: RuntimeDir, dest: Path, *, resume: bool) -> dict[str, Any]:
        document = read_json(rt.path / "hcs-document.json")
        if not document:
            raise Permanent(f"workspace {rt.path.name} has no hcs-document.json to record its layout",
                            "halt it and start it again, then take the snapshot")
        vhd = Path(document["VirtualMachine"]["Devices"]["Scsi"]["0"]["Attachments"]["0"]["Path"])
        snapshot.save(self.hcs, self.vm_handle(rt), dest, vhd, resume=resume)
        return {"vmm": self.name, "vmmVersion": self.hcs.host_version(), "layout": docs.device_layout(document)}

    def _spec(self, request: Request, system_id: str, rootfs: Path, config_vhd: Path,
              network: docs.NetworkAttachment | None) -> docs.VmSpec:
        cfg = request.config
        assert cfg is not None
        restore = str(Path(request.snapshot.path) / snapshot.STATE_FILE) if request.snapshot else ""
        return docs.VmSpec(
            system_id=system_id, kernel_path=cfg.kernelPath, initrd_path=cfg.initrdPath,
            rootfs_vhd=str(rootfs), config_vhd=str(config_vhd), hostname=cfg.hostname or self._name(request),
            memory_mib=cfg.memoryMiB, cpu_count=cfg.cpuCount, kernel_args=cfg.kernelArgs,
            extra_disks=tuple(docs.DiskAttachment(d.path, d.mode == "ro") for d in cfg.disks),
            network=network, restore_from=restore)

    def launch(self, request: Request, rt: RuntimeDir, ctx: BootContext) -> tuple[ComputeSystemHandle, dict[str, Any]]:
        """Create (not start) the compute system, its files granted to the VM."""
        cfg = request.config
        assert cfg is not None and isinstance(ctx, HyperVBoot) and ctx.rootfs and ctx.config_vhd
        vm = self.vm_handle(rt)
        document = docs.compute_system_document(self._spec(request, vm.system_id, ctx.rootfs, ctx.config_vhd,
                                                           ctx.nic))
        write_json_atomic(rt.path / "hcs-document.json", document)
        restore = document["VirtualMachine"].get("RestoreState", {}).get("SaveStateFilePath", "")
        for path in (cfg.kernelPath, cfg.initrdPath, str(ctx.rootfs), str(ctx.config_vhd), *(d.path for d in cfg.disks),
                     restore):
            if path:
                self.hcs.grant_vm_access(vm.system_id, path)
        self.hcs.create_compute_system(vm.system_id, json.dumps(document), HCS_TIMEOUT_S)
        return vm, {"systemId": vm.system_id, "vmId": None}

    def after_launch(self, request: Request, rt: RuntimeDir, vm: Any) -> None:
        """Start it and learn its ``RuntimeId``, which its Hyper-V sockets are addressed by."""
        assert isinstance(vm, ComputeSystemHandle)
        self.hcs.start_compute_system(vm.system_id, HCS_TIMEOUT_S)
        props = self.hcs.get_compute_system_properties(vm.system_id, "", HCS_TIMEOUT_S)
        vm.vm_id = str(props.get("RuntimeId") or "")
        if not vm.vm_id:
            raise Permanent(f"HCS reported no RuntimeId for {vm.system_id}; cannot reach its Hyper-V sockets")
        rt.update_runtime(vmId=vm.vm_id)

    def connect(self, request: Request) -> Response:
        """The supervisor has no console of its own on Hyper-V: fail closed."""
        raise Unsupported("the windows-hyperv supervisor has no direct console; use 'microagent connect'",
                          f"microagent connect {self._name(request)}")

    console = connect
