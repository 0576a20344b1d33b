"""The QEMU backend: ``qemu-system-*`` microVMs, KVM where usable, else TCG.

The lifecycle is :class:`~microagent.supervisors.vmm.VMMBackend`'s; this
module supplies the host checks, the command line (:mod:`.argv`), the
channel transport (QEMU's virtio-serial chardev socket) and pause/resume
through QMP.  QEMU pauses the VM itself when a disk write finds the host
disk full; ``query-status``/``query-block`` say so to ``inspect``, and the
channel helper follows it on a second QMP monitor (:mod:`microagent.channel.vm_events`).

``--network user`` runs QEMU in a namespace joined to the host by pasta, the
path firecracker takes too (:mod:`microagent.network.pasta`): only there can
the guest's destinations be filtered.  ``MICROAGENT_QEMU_USER_NETWORK=slirp``
asks for QEMU's built-in slirp instead: no privilege needed, but unfiltered
(the guest reaches the host's loopback through 10.0.2.2, the LAN and cloud
metadata), so it is an explicit choice that doctor flags.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from microagent.channel.vm_events import pause_reason
from microagent.errors import Conflict, MicroagentError, PolicyDenied, ResourceExhausted, Unsupported
from microagent.host import process
from microagent.network.pasta import QEMU_USER_NETWORK_ENV as USER_NETWORK_ENV
from microagent.runtime_state import RuntimeDir
from microagent.supervisors.linux_host import check_files, host_document, require_linux
from microagent import ramfiles
from microagent.supervisors.qemu import guest_arch, snapshot, virtiofs
from microagent.supervisors.qemu.argv import (
    anonymous_memory,
    device_layout,
    memory_backend,
    qemu_argv,
    ram_is_shared_file,
)
from microagent.supervisors.qemu.qmp import QMPClient
from microagent.supervisors.vmm import BootContext, VMMBackend
from microagent.vmkit.types import Request, Response


def accel_for(kvm_kind: str) -> str:
    """KVM only when it is hardware KVM: under PVM a stock guest kernel dies."""
    return "kvm" if kvm_kind == "hardware" else "tcg"


class QemuBackend(VMMBackend):
    name = "qemu"
    boot_files = ("channel.sock", "qmp.sock", "qmp-events.sock", "qemu.pid")
    supports_snapshots = True
    supports_shares = True  # virtiofs (:mod:`.virtiofs`)

    #: how long resume watches for QEMU pausing the VM again at once (the disk still full)
    resume_watch_s = 1.0

    def host(self, request: Request) -> Response:
        facts = require_linux(self.name, versions=True)
        doc = host_document(self.name, facts.tools["qemu"], facts, vsock=True,
                            accel=accel_for(facts.kvm.kind))
        doc["guestArchitectures"] = guest_arch.guest_architectures(facts, accel_for(facts.kvm.kind))
        return Response(ok=True, backend=self.name, host=doc)

    def user_provider(self) -> str:
        provider = os.environ.get(USER_NETWORK_ENV, "") or "pasta"
        if provider not in ("slirp", "pasta"):
            raise PolicyDenied(f"{USER_NETWORK_ENV}={provider!r} is not a user network provider",
                               "set it to slirp or pasta, or unset it")
        return provider

    def preflight(self, request: Request) -> BootContext:
        facts = require_linux(self.name, tools=("qemu",))
        qemu = facts.tools["qemu"]
        if not qemu.available:
            raise PolicyDenied(f"qemu is not installed: {qemu.error}",
                               "apt-get install qemu-system-x86 (or run 'make install')")
        check_files(request)
        assert request.config is not None
        binary, accel = guest_arch.vmm_for(guest_arch.guest_arch(request.config.kernelPath), facts,
                                           accel_for(facts.kvm.kind))
        return BootContext(binary=binary, accel=accel)

    def spawn(self, request: Request, rt: RuntimeDir,
              ctx: BootContext) -> tuple[subprocess.Popen[bytes], list[str]]:
        assert request.config is not None and request.identity is not None
        cfg, plan, snap = request.config, ctx.network, request.snapshot
        # A snapshot's memory file is mapped copy-on-write by every restore of it, in place
        # or a fork: the host keeps one copy of what the guest has not written since. A
        # snapshot without one (taken from such a mapping) carries the RAM in its state.
        if snap is not None and (Path(snap.path) / snapshot.MEMORY_FILE).is_file():
            memory = memory_backend(cfg, str(Path(snap.path) / snapshot.MEMORY_FILE), share=False)
        elif snap is not None:
            memory = anonymous_memory(cfg)
        else:
            ram = ramfiles.create(rt.path)
            memory = memory_backend(cfg, str(ram), share=True)
        if cfg.shares and snap is not None and snap.private:
            raise Unsupported("a workspace sharing host folders cannot start from a private snapshot (a fork)",
                              "create a new workspace with the same -v folders")
        sockets = virtiofs.start(rt, cfg.shares)  # before QEMU: it connects at startup
        argv = qemu_argv(ctx.binary, cfg, hostname=cfg.hostname or request.identity.runtimeID, accel=ctx.accel,
                         nic_args=plan.qemu_args() if plan is not None else [], memory_args=memory,
                         incoming=snap is not None, arch=guest_arch.guest_arch(cfg.kernelPath),
                         share_sockets=sockets)
        if snap is not None:
            from microagent.images.ext4 import copy_disk

            source = Path(snap.path)
            running = snapshot.qemu_version(ctx.binary, Path(cfg.stateDir) / "cache")
            self.refuse_incompatible(request, running, device_layout(argv), snapshot.WHY_VERSION)
            if not snap.private:  # in place: the snapshot's disk (a fork's caller copied its own)
                copy_disk(source / snapshot.DISK_FILE, Path(cfg.rootfsPath))
        if plan is not None:
            argv = plan.vmm_prefix() + argv  # inside pasta's namespace, when there is one
        return process.spawn_detached(argv, cwd=rt.path, log_path=rt.vmm_log), argv

    def after_spawn(self, request: Request, rt: RuntimeDir, proc: subprocess.Popen[bytes]) -> None:
        if request.snapshot is None:
            return
        snapshot.load(rt.path / "qmp.sock", Path(request.snapshot.path) / snapshot.STATE_FILE,
                      lambda: proc.poll() is None)

    def save_vm(self, rt: RuntimeDir, dest: Path, *, resume: bool) -> dict[str, Any]:
        runtime = rt.runtime()
        assert runtime is not None
        argv = list(runtime.argv or [])
        shared = ram_is_shared_file(argv)  # False: private memory (a restore), saved in the state
        ram = ramfiles.find(rt.path) if shared else None
        if shared is None or (shared and ram is None) or "-M" not in argv:
            raise Conflict(f"workspace {rt.path.name} was started without its RAM in a file, so it "
                           "cannot be snapshotted", "halt it and start it again, then take the snapshot")
        disk = Path(str((runtime.config or {}).get("rootfsPath", "")))
        snapshot.save(rt.path / "qmp.sock", dest, ram, disk, resume=resume)
        state_dir = (runtime.config or {}).get("stateDir")
        return {"vmm": self.name,
                "vmmVersion": snapshot.qemu_version(argv[argv.index("-M") - 1],
                                                    Path(state_dir) / "cache" if state_dir else None),
                "layout": device_layout(argv)}

    def _unlink_boot_files(self, rt: RuntimeDir) -> None:
        super()._unlink_boot_files(rt)
        ramfiles.release(rt.path)
        virtiofs.stop(rt)

    def guest_spec(self, rt: RuntimeDir) -> str:
        return f"unix:{rt.channel_socket}"

    def sever(self, rt: RuntimeDir) -> list[str]:
        severed = []
        if rt.channel_socket.exists():
            rt.channel_socket.unlink()  # QEMU keeps listening, but nothing can reach the path
            severed.append("channel.sock")
        if virtiofs.socket_names(rt):  # host folders: their daemons are host paths into the guest too
            virtiofs.stop(rt)
            severed.append("shares")
        runtime = rt.runtime()
        if runtime is not None and "-netdev" in (runtime.argv or []):
            try:  # the guest's NIC: link down, then the backend gone (user-mode slirp or TAP)
                with QMPClient(rt.path / "qmp.sock") as qmp:
                    qmp.execute("set_link", name="net0", up=False)
                    qmp.execute("netdev_del", id="net0")
                severed.append("network")
            except MicroagentError as exc:
                severed.append(f"network (qmp failed: {exc.message})")
        return severed

    def pause_vm(self, rt: RuntimeDir) -> None:
        with QMPClient(rt.path / "qmp.sock") as qmp:
            qmp.execute("stop")

    def resume_vm(self, rt: RuntimeDir) -> None:
        """``cont``; the writes that found the disk full are retried at once, so a disk
        still full pauses the VM again within moments: that is an error, not a resume."""
        with QMPClient(rt.path / "qmp.sock") as qmp:
            qmp.execute("cont")
            deadline = time.monotonic() + self.resume_watch_s
            while time.monotonic() < deadline:
                time.sleep(0.1)
                status = qmp.execute("query-status")
                if status.get("status") == "io-error":
                    reason = pause_reason(status, qmp.execute("query-block"))
                    raise ResourceExhausted(
                        f"workspace {rt.path.name} paused again at once: {reason}",
                        "free space on the disk holding the state directory, then resume it again")

    def run_status(self, rt: RuntimeDir) -> dict[str, Any] | None:
        try:
            with QMPClient(rt.path / "qmp.sock", timeout=2.0) as qmp:
                status = qmp.execute("query-status")
                devices = qmp.execute("query-block") if status.get("status") == "io-error" else []
        except (MicroagentError, OSError, ValueError):
            return None
        return {"running": bool(status.get("running")), "status": status.get("status"),
                "reason": pause_reason(status, devices)}

    def router_args(self, rt: RuntimeDir) -> list[str]:
        return ["--vm-events", str(rt.path / "qmp-events.sock")]
