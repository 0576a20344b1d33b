"""The Firecracker backend: ``firecracker`` microVMs on Linux with hardware KVM.

The lifecycle is :class:`~microagent.supervisors.vmm.VMMBackend`'s; this
module supplies the host checks, the configuration (:mod:`.config`), the
process (``firecracker --api-sock firecracker.sock --config-file
firecracker.json`` in the runtime directory), the channel transport (vsock
through Firecracker's host UDS ``vsock.sock``, ``CONNECT 1024``), and
pause/resume/status through the API (:mod:`.api`).

Files in the runtime directory of a boot:

- ``firecracker.json``: the configuration (kept after the VM ends, for forensics);
- ``firecracker.sock``: the API socket (ours: a control path, not a path into the guest);
- ``vsock.sock``: the vsock device's host side (the channel helper connects here);
- ``serial.log``: the serial console (firecracker's stdout, appended per boot);
- ``vmm.log``: firecracker's own log (``--log-path``); the previous boot's
  log is kept as ``vmm.log.1`` because firecracker writes its log file from
  offset 0 instead of appending;
- ``vmm.stderr.log``: firecracker's stderr (appended), kept apart from
  ``vmm.log`` so the two writers cannot overwrite each other;
- ``drive-<id>``: symlinks to the drives, which the configuration names by
  these relative paths so that snapshots stay relocatable (:mod:`.snapshot`);
- ``vsock-reset``: a snapshot of the paused VM reset the guest's vsock
  connections; ``resume`` gives the workspace a new channel helper.

A restore (``start`` with a snapshot) runs firecracker without
``--config-file`` and loads the snapshot through the API (:mod:`.snapshot`).

``--network user`` runs firecracker inside a network namespace of the
workspace's own, joined to the host by pasta (:mod:`microagent.network.pasta`):
the guest's NIC is the namespace's TAP ``vmtap0``.

Without hardware KVM a Firecracker guest cannot boot (docs/architecture.md,
"Facts about our hosts"); the supervisor refuses such hosts unless
``MICROAGENT_FIRECRACKER_ALLOW_NO_KVM=1`` is set, which starts the VMM process
anyway so the process model (config accepted, PID, API, signals, quarantine,
pause/resume) can be checked.  The test-only slow lane
(``MICROAGENT_TEST_FIRECRACKER_SLOW_LANE``, :mod:`.slow_lane`) boots real
guests on such a host, through KVM's instruction emulator: slowly, for tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microagent.errors import Conflict, InvalidRequest, MicroagentError, Permanent, PolicyDenied, Transient
from microagent.supervisors.firecracker.config import (
    API_SOCKET,
    CHANNEL_PORT,
    CONFIG_FILE,
    DRIVE_LINK_PREFIX,
    VSOCK_UDS,
    drive_links,
    firecracker_argv,
    firecracker_config,
)
from microagent.supervisors.firecracker import snapshot
from microagent.supervisors.firecracker.slow_lane import ENV as SLOW_LANE_ENV, slow_lane
from microagent.supervisors.linux_host import check_files, host_document, require_linux
from microagent.runtime_state import RuntimeDir
from microagent.supervisors.vmm import BootContext, VMMBackend
from microagent.vmkit.types import Request, Response

if TYPE_CHECKING:
    from microagent.supervisors.firecracker.api import FirecrackerAPI

ALLOW_NO_KVM_ENV = "MICROAGENT_FIRECRACKER_ALLOW_NO_KVM"
#: how long the API may take to answer after the process started
API_READY_TIMEOUT_S = 10.0
#: what firecracker logs once the VM of ``--config-file`` runs
STARTED_LINE = "Successfully started microvm"
#: firecracker's stderr (a panic, the final ``Error: ...``), appended per boot
STDERR_LOG = "vmm.stderr.log"
#: a snapshot of the paused VM reset its vsock connections: the channel helper follows at resume
VSOCK_RESET_MARK = "vsock-reset"


def allow_no_kvm(env: dict[str, str] | None = None) -> bool:
    """Whether ``MICROAGENT_FIRECRACKER_ALLOW_NO_KVM=1`` is set."""
    return (os.environ if env is None else env).get(ALLOW_NO_KVM_ENV, "") == "1"


class FirecrackerBackend(VMMBackend):
    name = "firecracker"
    boot_files = (API_SOCKET, VSOCK_UDS, VSOCK_RESET_MARK)
    supports_snapshots = True  # :mod:`.snapshot`

    # --- host ------------------------------------------------------------------

    def host(self, request: Request) -> Response:
        facts = require_linux(self.name, versions=True)
        doc = host_document(self.name, facts.tools["firecracker"], facts,
                            vsock=facts.vhost_vsock, accel="kvm")
        doc["allowNoKvm"] = allow_no_kvm()
        return Response(ok=True, backend=self.name, host=doc)

    def preflight(self, request: Request) -> BootContext:
        from microagent.host.detect import host_os, probe_kvm
        from microagent.host.firecracker_binary import resolve_firecracker

        if host_os() != "linux":
            require_linux(self.name)  # raises Unsupported naming the host OS
        try:
            binary = resolve_firecracker()
        except MicroagentError as exc:
            raise PolicyDenied(f"firecracker binary not usable: {exc.message}",
                               "run 'make install' or set MICROAGENT_FIRECRACKER") from exc
        kvm = probe_kvm()
        lane = slow_lane()  # tests only; validated before any side effect
        if lane is not None and not kvm.present:
            raise PolicyDenied(f"the firecracker slow lane still needs /dev/kvm: {kvm.detail}",
                               f"unset {SLOW_LANE_ENV} and use --backend qemu on this host")
        if kvm.kind != "hardware" and not allow_no_kvm() and lane is None:
            raise PolicyDenied(f"firecracker cannot boot guests here: {kvm.detail}",
                               f"use --backend qemu on this host (or set {ALLOW_NO_KVM_ENV}=1 to start the "
                               "VMM process anyway, for process-model checks)")
        check_files(request)
        return BootContext(binary=str(binary))

    def guest_unready_reason(self) -> str:
        from microagent.host.detect import probe_kvm

        kvm = probe_kvm()
        if kvm.kind == "hardware" or slow_lane() is not None:
            return ""
        return f"no hardware KVM here ({kvm.detail}), so the guest cannot boot"

    def user_provider(self) -> str:
        return "pasta"  # firecracker has no user-mode network of its own

    # --- process ---------------------------------------------------------------

    def spawn(self, request: Request, rt: RuntimeDir,
              ctx: BootContext) -> tuple[subprocess.Popen[bytes], list[str]]:
        cfg, ident = request.config, request.identity
        assert cfg is not None and ident is not None
        hostname = cfg.hostname or ident.runtimeID
        doc = firecracker_config(cfg, hostname, slow_lane(), linked=True)
        plan = ctx.network
        if plan is not None and plan.tap:  # nat's host TAP, or the TAP in pasta's namespace
            doc["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": plan.tap}]
        snap = request.snapshot
        if snap is not None:
            self._prepare_restore(request, ctx, doc)
        self._link_drives(rt, cfg)
        # written for a restore too: what the VM runs with, and its layout for the next snapshot
        (rt.path / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        # firecracker writes its log from offset 0 of an existing file: one fresh file per boot
        if rt.vmm_log.exists():
            os.replace(rt.vmm_log, rt.path / "vmm.log.1")
        rt.vmm_log.touch()
        argv = ((plan.vmm_prefix() if plan is not None else [])
                + firecracker_argv(ctx.binary, ident.runtimeID, restore=snap is not None))
        serial = open(rt.serial_log, "ab")
        stderr = open(rt.path / STDERR_LOG, "ab")  # panics and the final error; not vmm.log (see above)
        try:
            proc = subprocess.Popen(argv, cwd=rt.path, stdin=subprocess.DEVNULL, stdout=serial, stderr=stderr,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise Permanent(f"cannot start {argv[0]}: {exc.strerror}") from exc
        finally:
            serial.close()
            stderr.close()
        return proc, argv

    def after_spawn(self, request: Request, rt: RuntimeDir, proc: subprocess.Popen[bytes]) -> None:
        """Wait until firecracker has built and started the VM, then until its API answers.

        With ``--config-file`` firecracker serves its API thread at once but
        builds the VM first; it logs ``Successfully started microvm`` when the
        configuration was accepted, or exits with the reason.  The API is not
        asked before that line: an API request pending while the build fails
        makes firecracker 1.12 panic instead of reporting the reason.

        A restore (``request.snapshot``) has no configuration: once the API
        answers, the snapshot is loaded through it and the VM runs.
        """
        assert request.config is not None
        deadline = time.monotonic() + min(API_READY_TIMEOUT_S, max(request.config.timeoutSeconds, 1.0))
        if request.snapshot is not None:
            self._wait_api(rt, proc, deadline)
            snapshot.load(self._api(rt, timeout=snapshot.LOAD_TIMEOUT_S), Path(request.snapshot.path))
            return
        while STARTED_LINE not in self._read_log(rt):
            if proc.poll() is not None:
                raise self._exited(rt, proc)
            if time.monotonic() >= deadline:
                raise Transient(f"firecracker did not start the VM within {API_READY_TIMEOUT_S:.0f}s: "
                                f"{self._vmm_log_tail(rt) or 'no log output'}", "see vmm.log in the runtime directory")
            time.sleep(0.01)
        api = self._api(rt, timeout=2.0)
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._exited(rt, proc)
            try:
                info = api.instance_info()
            except Transient as exc:
                last = exc.message
            else:
                if info.state in ("Running", "Paused"):
                    return
                last = f"instance state is {info.state!r}"
            time.sleep(0.01)
        raise Transient(f"firecracker's API did not report a started VM in time ({last})",
                        "see vmm.log in the runtime directory")

    def _wait_api(self, rt: RuntimeDir, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Until the API of a firecracker started without a configuration answers."""
        api, last = self._api(rt, timeout=2.0), ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._exited(rt, proc)
            try:
                api.instance_info()
                return
            except Transient as exc:
                last = exc.message
            time.sleep(0.005)
        raise Transient(f"firecracker's API did not answer in time ({last})", "see vmm.log in the runtime directory")

    # --- snapshots ---------------------------------------------------------------

    @staticmethod
    def _link_drives(rt: RuntimeDir, cfg: Any) -> None:
        """The runtime directory's ``drive-<id>`` symlinks the configuration opens the drives by."""
        for link, target in drive_links(cfg).items():
            if "/" in link or "\0" in link:
                raise InvalidRequest(f"drive id {link.removeprefix(DRIVE_LINK_PREFIX)!r} is not a file name",
                                     "name disks with letters, digits, '-' and '_'")
            (rt.path / link).unlink(missing_ok=True)
            os.symlink(target, rt.path / link)

    def _prepare_restore(self, request: Request, ctx: BootContext, doc: dict[str, Any]) -> None:
        """Refuse another firecracker or device layout; an in-place restore takes the
        snapshot's disk (a fork's was copied when it was created)."""
        from microagent.host.firecracker_binary import firecracker_version

        assert request.config is not None and request.snapshot is not None
        self.refuse_incompatible(request, snapshot.vmm_version(firecracker_version(Path(ctx.binary))),
                                 snapshot.device_layout(doc), snapshot.WHY_VERSION)
        if not request.snapshot.private:
            from microagent.images.ext4 import copy_disk

            copy_disk(Path(request.snapshot.path) / snapshot.DISK_FILE, Path(request.config.rootfsPath))

    def save_vm(self, rt: RuntimeDir, dest: Path, *, resume: bool) -> dict[str, Any]:
        runtime = rt.runtime()
        assert runtime is not None
        try:
            doc = json.loads((rt.path / CONFIG_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise Permanent(f"cannot read {CONFIG_FILE} of workspace {rt.path.name}: {exc}") from exc
        if not all(str(d.get("path_on_host", "")).startswith(DRIVE_LINK_PREFIX) for d in doc.get("drives", [])):
            raise Conflict(f"workspace {rt.path.name} was started with absolute drive paths, which its "
                           "snapshot would record", "halt it and start it again, then take the snapshot")
        api = self._api(rt, timeout=snapshot.SAVE_TIMEOUT_S)
        version = snapshot.vmm_version(api.instance_info().vmm_version)
        try:
            snapshot.save(api, dest, Path(str((runtime.config or {}).get("rootfsPath", ""))), resume=resume)
        finally:
            # Firecracker resets the guest's vsock connections when it saves: the helper's channel
            # ends once the guest runs again, so a new helper follows (now, or at resume)
            if resume:
                self._reconnect_helper(rt)
            else:
                (rt.path / VSOCK_RESET_MARK).touch()
        return {"vmm": self.name, "vmmVersion": version, "layout": snapshot.device_layout(doc)}

    def _reconnect_helper(self, rt: RuntimeDir) -> None:
        """A new channel helper in place of the one whose vsock connection Firecracker reset at
        the snapshot (the old one would notice only at its next request).  The guest may drop
        the new connection too while it handles the reset; the helper then connects again."""
        (rt.path / VSOCK_RESET_MARK).unlink(missing_ok=True)
        old = self.live_helper(rt)
        if old is not None:
            old.kill()
        runtime = rt.runtime()
        if runtime is not None and self.live_vm(rt) is not None:
            self._respawn_helper(rt, runtime)

    def _unlink_boot_files(self, rt: RuntimeDir) -> None:
        super()._unlink_boot_files(rt)
        for link in rt.path.glob(f"{DRIVE_LINK_PREFIX}*"):
            if link.is_symlink():
                link.unlink(missing_ok=True)

    @staticmethod
    def _read_log(rt: RuntimeDir) -> str:
        try:
            return rt.vmm_log.read_text(errors="replace")
        except OSError:
            return ""

    def _exited(self, rt: RuntimeDir, proc: subprocess.Popen[bytes]) -> Permanent:
        """The error for a firecracker that exited while starting: its own reason, from its logs."""
        lines = [line.strip() for line in self._read_log(rt).splitlines() if line.strip()]
        try:
            lines += (rt.path / STDERR_LOG).read_text(errors="replace").strip().splitlines()
        except OSError:
            pass
        reasons = [line for line in lines if "error" in line.lower() or "panicked" in line.lower()]
        reason = (reasons[0] if reasons else " | ".join(lines[-3:])) or "no log output"
        reason = reason.split("] ", 1)[-1]  # drop firecracker's "<time> [<id>:<thread>]" prefix
        return Permanent(f"firecracker exited with status {proc.returncode} while starting the VM: {reason}",
                         "see vmm.log and firecracker.json in the runtime directory")

    def router_args(self, rt: RuntimeDir) -> list[str]:
        # Firecracker resets vsock connections when it saves or loads a snapshot: a guest
        # dropping the helper's first connection is no sign the VM went away.
        return ["--reconnect-during-hello"]

    def guest_spec(self, rt: RuntimeDir) -> str:
        return f"fc-vsock:{rt.path / VSOCK_UDS}:{CHANNEL_PORT}"

    def sever(self, rt: RuntimeDir) -> list[str]:
        """Unlink the vsock device's host side and any ``vsock.sock_<port>`` listeners.

        The API socket stays: it is our control path to the VMM (status,
        pause), not a path into the guest.  The console has no input
        (firecracker's stdin is ``/dev/null``).  The network is cut by
        ``detach_network`` right after: nat's TAP and rules go, or pasta (the
        namespace's only way out) is killed.
        """
        severed = []
        for path in sorted(rt.path.glob(f"{VSOCK_UDS}*")):
            if path.name == VSOCK_UDS or path.name.startswith(f"{VSOCK_UDS}_"):
                path.unlink(missing_ok=True)
                severed.append(path.name)
        return severed

    # --- API -------------------------------------------------------------------

    def _api(self, rt: RuntimeDir, timeout: float = 5.0) -> "FirecrackerAPI":
        from microagent.supervisors.firecracker.api import FirecrackerAPI  # http.client: only when used

        return FirecrackerAPI(rt.path / API_SOCKET, timeout=timeout)

    def pause_vm(self, rt: RuntimeDir) -> None:
        api = self._api(rt)
        api.pause()
        state = api.instance_info().state
        if state != "Paused":
            raise Permanent(f"firecracker reports state {state!r} after a pause")

    def resume_vm(self, rt: RuntimeDir) -> None:
        api = self._api(rt)
        api.resume()
        state = api.instance_info().state
        if state != "Running":
            raise Permanent(f"firecracker reports state {state!r} after a resume")
        if (rt.path / VSOCK_RESET_MARK).exists():  # snapshotted while paused (see save_vm)
            self._reconnect_helper(rt)

    def vmm_status(self, rt: RuntimeDir) -> dict[str, Any] | None:
        try:
            info = self._api(rt, timeout=2.0).instance_info()
        except MicroagentError as exc:
            return {"apiError": exc.message}
        return {"id": info.id, "state": info.state, "vmmVersion": info.vmm_version,
                "apiSocket": str(rt.path / API_SOCKET)}

