"""The apple-vf test harness (imported as ``applevf.harness``): the real backend in-process.

:class:`AppleVF` drives :class:`~microagent.supervisors.applevf.backend.AppleVFBackend`
in this process; its vmhost is the real vmhost *process* started through
``fake_vmhost.py``, i.e. running against ``FakeVirtualization``.  The
contract suite (``tests/contract/harness_applevf.py``) uses it too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FAKE_VMHOST = HERE / "fake_vmhost.py"


REPO = HERE.parents[1]
#: a state root of its own for the real apple-vf kernel (outside the user's ~/.microagent)
KERNEL_ROOT = REPO / ".cache" / "applevf-state"


def aarch64_guest_files() -> tuple[Path, Path]:
    """The real apple-vf guest files: Debian's arm64 ``Image`` and the initramfs with the aarch64 init.

    The kernel is installed once per machine with ``install_kernel(…, "apple-vf",
    arch="aarch64")`` (the .deb from the user's apt-downloaded cache when it is
    there), the initramfs built by the same ``ensure_initramfs`` a boot uses.
    """
    import fcntl

    from microagent.guestinit import find_guest_init as find
    from microagent.kernels import debian, ensure_initramfs, install_kernel
    from microagent.paths import kernel_dir, state_root

    kdir = kernel_dir(KERNEL_ROOT, "apple-vf", "aarch64")
    KERNEL_ROOT.mkdir(parents=True, exist_ok=True)
    with open(KERNEL_ROOT / ".install.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # tests in parallel: one installs, the rest wait
        if not (kdir / "kernel.json").is_file():
            pkg = debian.resolve_kernel_package("aarch64")
            deb = debian.download_deb(pkg, debian.deb_cache_dir(state_root(None)))
            install_kernel(KERNEL_ROOT, "apple-vf", deb=deb, arch="aarch64")
        initrd = ensure_initramfs(kdir, find("aarch64"))
    return kdir / "Image", initrd


@dataclass
class VMFiles:
    """The real aarch64 kernel and initramfs (symlinked, so a test may delete its own), dummy disks."""

    root: Path
    kernel: Path
    initrd: Path
    rootfs: Path
    data: Path

    @classmethod
    def create(cls, root: Path) -> "VMFiles":
        root.mkdir(parents=True, exist_ok=True)
        files = cls(root, root / "Image", root / "initramfs.cpio", root / "rootfs.ext4", root / "data.img")
        kernel, initrd = aarch64_guest_files()
        for link, target in ((files.kernel, kernel), (files.initrd, initrd)):
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        for path in (files.rootfs, files.data):
            path.write_bytes(b"\0" * 4096)
        return files


def invoke(backend: Any, raw: dict[str, Any]) -> dict[str, Any]:
    """What ``supervisors.base.serve`` does with one request, minus stdin/stdout."""
    from microagent.errors import InvalidRequest, MicroagentError
    from microagent.supervisors.base import _error_response
    from microagent.vmkit.types import parse_request

    try:
        request = parse_request(raw)
        if request.identity is not None and request.identity.backend != backend.name:
            raise InvalidRequest(f"identity.backend is {request.identity.backend!r} but this is the "
                                  f"{backend.name} supervisor")
        response = getattr(backend, request.command)(request)
    except MicroagentError as err:
        response = _error_response(backend.name, err, raw)
    return response.to_json()  # type: ignore[no-any-return]


@dataclass
class AppleVF:
    """The real backend in-process; :meth:`call` answers like the executable would."""

    state_dir: Path
    files: VMFiles
    vmhost_command: list[str]
    name: str = "ws1"
    backend: Any = field(init=False)

    def __post_init__(self) -> None:
        from microagent.supervisors.applevf.backend import AppleVFBackend

        self.backend = AppleVFBackend(vmhost_command=self.vmhost_command)

    def request(self, command: str, name: str | None = None, **config: Any) -> dict[str, Any]:
        raw: dict[str, Any] = {"command": command}
        if command != "host":
            raw["identity"] = {"requestID": "t", "runtimeID": name or self.name, "role": "workload",
                               "backend": "apple-vf"}
            cfg: dict[str, Any] = {"stateDir": str(self.state_dir)}
            if command in ("check", "prepare", "start", "run"):
                cfg.update(kernelPath=str(self.files.kernel), initrdPath=str(self.files.initrd),
                           rootfsPath=str(self.files.rootfs), memoryMiB=256, cpuCount=1, timeoutSeconds=15)
            cfg.update(config)
            raw["config"] = cfg
        return raw

    def call(self, command: str, name: str | None = None, exec: dict[str, Any] | None = None,
             snapshot: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
        raw = self.request(command, name, **config)
        if exec is not None:
            raw["exec"] = exec
        if snapshot is not None:
            raw["snapshot"] = snapshot
        return invoke(self.backend, raw)

    def runtime(self, name: str | None = None) -> Path:
        return self.state_dir / "run" / (name or self.name)

    def runtime_json(self, name: str | None = None) -> dict[str, Any]:
        return json.loads((self.runtime(name) / "runtime.json").read_text())  # type: ignore[no-any-return]


def processes_mentioning(marker: str) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose arguments mention ``marker``."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines()[1:]:
        pid, stat, args = (line.strip().split(None, 2) + ["", ""])[:3]
        if marker in args and not stat.startswith("Z") and int(pid) != os.getpid():
            found.append((int(pid), args))
    return found


def kill_leftovers(marker: str) -> list[str]:
    """SIGKILL every process mentioning ``marker``; returns what was found."""
    left = processes_mentioning(marker)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [args for _, args in left]


def find_guest_init() -> Path | None:
    """The built guest init for this host's architecture (the fake guest runs it)."""
    from microagent.errors import MicroagentError
    from microagent.guestinit import find_guest_init as find
    from microagent.paths import host_arch

    try:
        return find(host_arch())
    except MicroagentError:
        return None
