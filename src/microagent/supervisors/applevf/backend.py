"""The apple-vf backend: Linux guests under macOS Virtualization.framework.

The lifecycle is :class:`~microagent.supervisors.vmm.VMMBackend`'s (start,
halt, stop = SIGTERM, kill = SIGKILL, quarantine keeps the PID, delete
refused while alive); the "VMM process" it records is the per-workspace
host process :mod:`.vmhost`, which owns the ``VZVirtualMachine``.  This
module supplies:

- ``spawn``: write the VM spec ``applevf.json`` (:func:`.vzconfig.vm_spec`)
  and start ``<signed python> -m microagent.supervisors.applevf.vmhost
  --state-dir D --name N`` detached, with the runtime directory as its cwd;
- ``after_spawn``: wait until the vmhost answers ``state`` with ``running``
  (or turn its logged error back into the same error kind);
- the guest channel: ``unix:<runtime>/vsock.sock``, the vmhost's bridge to
  guest vsock port 1024, so the channel helper needs nothing new;
- quarantine (``sever``: the vsock listener and bridges, the NIC's
  attachment), pause/resume and status, over the vmhost's control socket;
- snapshots (:mod:`.snapshot`): ``save_vm`` through the vmhost's ``save``
  op, and a ``start`` with a snapshot runs the vmhost with ``--restore``.

The supervisor process itself never imports PyObjC: only the vmhost does
(``--check`` and ``--probe`` included), run by the interpreter that carries
the ``com.apple.security.virtualization`` entitlement (:func:`vmhost_python`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from msgspec import structs

from microagent.errors import MicroagentError, NotFound, Permanent, Transient
from microagent.host import process
from microagent.host.detect import host_os
from microagent.network.plan import NetworkPlan
from microagent.paths import host_arch
from microagent.runtime_state import RuntimeDir, write_json_atomic
from microagent.supervisors import netattach
from microagent.supervisors.applevf import control, snapshot
from microagent.supervisors.applevf.guest_files import check_guest_files
from microagent.supervisors.applevf.vzconfig import (
    SPEC_FILE,
    VZ_NAT_GATEWAY,
    guest_network,
    mac_address,
    network_attachment,
    vm_spec,
)
from microagent.supervisors.linux_host import check_files
from microagent.supervisors.vmm import BootContext, VMMBackend, runtime_dir_for
from microagent.vmkit.types import Config, Request, Response

PYTHON_ENV = "MICROAGENT_APPLEVF_PYTHON"
#: the signed copy of the interpreter that ``sign`` makes inside a venv
SIGNED_PYTHON_NAME = "python-vz"
VMHOST_MODULE = "microagent.supervisors.applevf.vmhost"
VMHOST_READY_S = 30.0
PROBE_TIMEOUT_S = 30.0


def vmhost_python(env: Mapping[str, str] | None = None) -> str:
    """The interpreter that runs the vmhost: it needs ``com.apple.security.virtualization``.

    ``$MICROAGENT_APPLEVF_PYTHON`` (must exist) → ``<sys.prefix>/bin/python-vz``
    (made by ``python -m microagent.supervisors.applevf.sign``) → this interpreter.

    :raises NotFound: the environment variable names a missing file.
    """
    path = (os.environ if env is None else env).get(PYTHON_ENV, "")
    if path:
        if not os.path.isfile(path):
            raise NotFound(f"{PYTHON_ENV}={path} does not exist", f"unset {PYTHON_ENV} or point it at a signed python")
        return path
    signed = Path(sys.prefix) / "bin" / SIGNED_PYTHON_NAME
    return str(signed) if signed.is_file() else sys.executable


class AppleVFBackend(VMMBackend):
    """``microagent-applevf-supervisor`` on macOS.

    :param vmhost_command: the argv prefix that starts a vmhost (default: the
        signed interpreter with ``-m microagent.supervisors.applevf.vmhost``);
        tests pass one that runs the vmhost against ``FakeVirtualization``.
    """

    name = "apple-vf"
    boot_files = (control.CONTROL_SOCKET, control.VSOCK_SOCKET)
    supports_shares = True  # VirtioFS (vzconfig._share)
    supports_snapshots = True  # :mod:`.snapshot` (macOS 14+)

    def __init__(self, vmhost_command: Sequence[str] | None = None) -> None:
        self._vmhost_command = list(vmhost_command) if vmhost_command else None

    # --- the vmhost process ----------------------------------------------------

    def vmhost_prefix(self) -> list[str]:
        if self._vmhost_command:
            return list(self._vmhost_command)
        return [vmhost_python(), "-m", VMHOST_MODULE]

    def _vmhost_json(self, args: list[str], timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
        """Run the vmhost in a one-shot mode (``--probe``, ``--check``) and read its JSON answer.

        :raises Permanent: it could not be run or printed no answer.
        """
        argv = self.vmhost_prefix() + args
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Permanent(f"cannot run the apple-vf host process ({argv[0]}): {exc}",
                            "see docs/backends/apple-vf.md") from exc
        lines = done.stdout.strip().splitlines()
        try:
            answer = json.loads(lines[-1])
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except (IndexError, ValueError):
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise Permanent(f"the apple-vf host process answered nothing (status {done.returncode}): {tail}",
                            "see docs/backends/apple-vf.md") from None
        return answer

    # --- host and checks -------------------------------------------------------

    def host(self, request: Request) -> Response:
        from microagent.guestinit import find_guest_init

        with tempfile.TemporaryDirectory(prefix="microagent-applevf-") as tmp:
            probe = self._vmhost_json(["--state-dir", tmp, "--name", "probe", "--probe"])
        try:
            guest_init = str(find_guest_init("aarch64"))
        except MicroagentError:
            guest_init = ""
        python = self.vmhost_prefix()[0]
        doc: dict[str, Any] = {
            "backend": self.name,
            "os": host_os(),
            "architecture": host_arch(),
            "macOSVersion": platform.mac_ver()[0],
            "vmhostPython": python,
            "virtualizationEntitlement": _has_entitlement(python),
            "pyobjcAvailable": bool(probe.get("ok")),
            "virtualizationSupported": bool(probe.get("supported")),
            "cpuCountRange": probe.get("cpuCount"),
            "memoryMiBRange": probe.get("memoryMiB"),
            "vsockAvailable": bool(probe.get("ok")),
            "userNetworkingAvailable": bool(probe.get("ok")),  # VZNATNetworkDeviceAttachment
            "bridgedNetworkingAvailable": False,  # needs com.apple.vm.networking
            "guestInitPath": guest_init,
            "guestInitAvailable": bool(guest_init),
        }
        if not probe.get("ok"):
            doc["probeError"] = (probe.get("error") or {}).get("message", "")
        return Response(ok=True, backend=self.name, host=doc)

    def preflight(self, request: Request) -> BootContext:
        assert request.config is not None
        network_attachment(request.config.network.mode)  # bridged: policy_denied before anything
        check_files(request)
        check_guest_files(request.config.kernelPath, request.config.initrdPath)  # arm64 only
        return BootContext()

    def check(self, request: Request) -> Response:
        """Files, network policy, then the real configuration validated by the vmhost."""
        self.preflight(request)
        assert request.config is not None and request.identity is not None
        spec = vm_spec(request.config, request.identity.runtimeID, os.devnull)
        with tempfile.TemporaryDirectory(prefix="microagent-applevf-") as tmp:
            spec_path = Path(tmp) / SPEC_FILE
            spec_path.write_text(json.dumps(spec))
            answer = self._vmhost_json(["--state-dir", tmp, "--name", "check", "--check", "--spec", str(spec_path)])
        if not answer.get("ok"):
            raise MicroagentError.from_dict(answer.get("error") or {})
        return self.event(request, "unknown", "check passed: Virtualization.framework accepted the configuration")

    # --- boot ------------------------------------------------------------------

    def attach_network(self, cfg: Config, rt: RuntimeDir, name: str) -> netattach.Attachment:
        """``nat``/``user`` is ``VZNATNetworkDeviceAttachment`` inside the VM: no TAP, no rules.

        The host side is only the published ports (bound now, served by the
        channel helper); ``network.json`` records the VZ attachment.
        """
        attachment_kind = network_attachment(cfg.network.mode)  # bridged → policy_denied
        host_side = structs.replace(cfg, network=structs.replace(cfg.network, mode="isolated"
                                                                         if not cfg.network.portForwards
                                                                         else "user"))
        attachment = netattach.attach(host_side, rt, name)
        attachment.plan = NetworkPlan(mode=cfg.network.mode)
        record: dict[str, Any] = {
            "mode": "isolated" if attachment_kind == "none" else "vz-nat", "requestedMode": cfg.network.mode,
            "published": [{"host": f.host, "hostPort": f.hostPort, "guestPort": f.guestPort, "protocol": "tcp"}
                          for f in cfg.network.portForwards]}
        if attachment_kind == "nat":
            record.update(attachment="VZNATNetworkDeviceAttachment", macAddress=mac_address(name),
                          addressing="dhcp (vmnet)", hostAlias=VZ_NAT_GATEWAY)
        write_json_atomic(rt.path / "network.json", record)
        return attachment

    def guest_network(self, attachment: netattach.Attachment, name: str) -> dict[str, Any]:
        return guest_network(attachment.plan.mode, name)

    def spawn(self, request: Request, rt: RuntimeDir,
              ctx: BootContext) -> tuple[subprocess.Popen[bytes], list[str]]:
        cfg, ident = request.config, request.identity
        assert cfg is not None and ident is not None
        name = ident.runtimeID
        spec = vm_spec(cfg, name, str(rt.serial_log))
        restore: list[str] = []
        if request.snapshot is not None:
            restore = ["--restore", str(self._prepare_restore(request, spec) / snapshot.STATE_FILE)]
        write_json_atomic(rt.path / SPEC_FILE, spec)
        argv = self.vmhost_prefix() + ["--state-dir", str(rt.path.parent), "--name", name, *restore]
        return process.spawn_detached(argv, cwd=rt.path, log_path=rt.vmm_log), argv

    # --- snapshots ---------------------------------------------------------------

    def framework_version(self) -> str:
        """What the vmhost reports for this Mac's macOS and Virtualization.framework."""
        with tempfile.TemporaryDirectory(prefix="microagent-applevf-") as tmp:
            probe = self._vmhost_json(["--state-dir", tmp, "--name", "probe", "--probe"])
        if not probe.get("ok"):
            raise MicroagentError.from_dict(probe.get("error") or {})
        return str(probe.get("framework", ""))

    def _prepare_restore(self, request: Request, spec: dict[str, Any]) -> Path:
        """Refuse another macOS/framework or device layout; an in-place restore takes the
        snapshot's disk (a fork's was copied when it was created).  Returns the snapshot."""
        assert request.snapshot is not None and request.config is not None
        source = Path(request.snapshot.path)
        version = self.framework_version() if request.snapshot.vmmVersion else ""  # a probe: ask only to compare
        self.refuse_incompatible(request, version, snapshot.device_layout(spec), snapshot.WHY_VERSION)
        if not (source / snapshot.STATE_FILE).is_file():
            raise NotFound(f"the snapshot {source} has no {snapshot.STATE_FILE} file",
                           "take a new snapshot after a cold start")
        if not request.snapshot.private:
            from microagent.images.ext4 import copy_disk

            copy_disk(source / snapshot.DISK_FILE, Path(request.config.rootfsPath))
        return source

    def save_vm(self, rt: RuntimeDir, dest: Path, *, resume: bool) -> dict[str, Any]:
        """Pause (the framework saves only a paused VM), save, copy the disk, resume when asked."""
        from microagent.images.ext4 import copy_disk

        runtime = rt.runtime()
        assert runtime is not None
        try:
            spec = json.loads((rt.path / SPEC_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise Permanent(f"cannot read {SPEC_FILE} of workspace {rt.path.name}: {exc}") from exc
        state = control.call(rt.path, "state", timeout=5.0)
        if state.get("vzState") == "running":
            control.call(rt.path, "pause", timeout=15.0)
        try:
            control.call(rt.path, "save", timeout=snapshot.SAVE_TIMEOUT_S, path=str(dest / snapshot.STATE_FILE))
            # the vcpus are stopped: the root disk is at rest
            copy_disk(Path(str((runtime.config or {}).get("rootfsPath", ""))), dest / snapshot.DISK_FILE)
        finally:
            if resume:
                control.call(rt.path, "resume", timeout=15.0)
        return {"vmm": self.name, "vmmVersion": str(state.get("framework", "")),
                "layout": snapshot.device_layout(spec)}

    def after_spawn(self, request: Request, rt: RuntimeDir, proc: subprocess.Popen[bytes]) -> None:
        """Wait until the vmhost reports the VM running.

        :raises MicroagentError: the vmhost's own error (its kind), when it exited.
        :raises Transient: no running VM within the timeout.
        """
        assert request.config is not None
        deadline = time.monotonic() + min(VMHOST_READY_S, max(request.config.timeoutSeconds, 1.0))
        last = "no answer yet"
        while True:
            status = proc.poll()
            if status is not None:
                err = control.last_error(rt.vmm_log)
                if err is not None:
                    raise err
                raise Permanent(f"the apple-vf host process exited with status {status} while starting the VM: "
                                f"{self._vmm_log_tail(rt) or 'no log output'}", "see vmm.log in the runtime directory")
            if (rt.path / control.CONTROL_SOCKET).exists():
                try:
                    answer = control.call(rt.path, "state", timeout=2.0)
                except Transient as exc:
                    last = exc.message
                else:
                    if answer.get("state") == "running":
                        return
                    last = f"state {answer.get('state')!r} (VZ {answer.get('vzState')!r})"
            if time.monotonic() >= deadline:
                raise Transient(f"the apple-vf host process did not report a running VM in time ({last})",
                                "see vmm.log in the runtime directory")
            time.sleep(0.02)

    def guest_spec(self, rt: RuntimeDir) -> str:
        return f"unix:{rt.path / control.VSOCK_SOCKET}"

    # --- control ---------------------------------------------------------------

    def sever(self, rt: RuntimeDir) -> list[str]:
        """The vmhost cuts its vsock listener, open vsock bridges and the NIC's attachment."""
        try:
            severed = list(control.call(rt.path, "sever")["severed"])
        except MicroagentError as exc:
            severed = [f"vsock (the vmhost did not answer: {exc.message})"]
        vsock = rt.path / control.VSOCK_SOCKET
        if vsock.exists():
            vsock.unlink()
            severed.append(control.VSOCK_SOCKET)
        return severed

    def pause_vm(self, rt: RuntimeDir) -> None:
        control.call(rt.path, "pause", timeout=15.0)

    def resume_vm(self, rt: RuntimeDir) -> None:
        control.call(rt.path, "resume", timeout=15.0)

    def vmm_status(self, rt: RuntimeDir) -> dict[str, Any] | None:
        try:
            answer = control.call(rt.path, "state", timeout=2.0)
        except MicroagentError as exc:
            return {"controlError": exc.message}
        answer.pop("ok", None)
        answer["controlSocket"] = str(rt.path / control.CONTROL_SOCKET)
        return answer

    def inspect(self, request: Request) -> Response:
        response = super().inspect(request)
        if response.runtime is not None:
            response.runtime["vmhostPid"] = response.runtime.get("pid")
        return response


def _has_entitlement(python: str) -> bool | None:
    """Whether ``python`` is signed with ``com.apple.security.virtualization`` (None: cannot tell)."""
    if host_os() != "darwin":
        return None
    try:
        done = subprocess.run(["codesign", "-d", "--entitlements", "-", "--xml", os.path.realpath(python)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return b"com.apple.security.virtualization" in done.stdout + done.stderr


__all__ = ["AppleVFBackend", "runtime_dir_for", "vmhost_python"]
