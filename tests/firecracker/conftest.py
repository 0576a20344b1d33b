"""Fixtures for the Firecracker backend, with the real ``firecracker`` binary.

- ``fc_binary``: the pinned firecracker (``binary.install_pinned``: a no-op
  when ``<venv>/libexec/firecracker`` already has the pinned sha256).
- ``fc_kernel``: the firecracker kernel (vmlinux ELF + modules) installed into
  a session temp state root from the cached Debian .deb, and its initramfs.
- ``fc``: a :class:`FC` bound to a per-test state directory, calling the real
  ``microagent-firecracker-supervisor`` executable (JSON on stdin).  After
  every test no live process may have its cwd or arguments under that state
  directory (firecracker runs with cwd = runtime dir; the channel helper names
  it in its arguments).

Without hardware KVM (our PVM hosts) the guest cannot boot, so the process
tests start with ``readiness: "vmm"`` and ``MICROAGENT_FIRECRACKER_ALLOW_NO_KVM=1``;
guest tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from microagent.host.detect import probe_kvm
from microagent.paths import host_arch, kernel_dir, state_root

SUPERVISOR = str(Path(sys.executable).parent / "microagent-firecracker-supervisor")
REPO = Path(__file__).resolve().parents[2]
KERNEL_DEB_GLOB = "linux-image-*-cloud-amd64_*.deb"


def hardware_kvm() -> tuple[bool, str]:
    kvm = probe_kvm()
    return kvm.kind == "hardware", kvm.detail


def _cached_kernel_deb() -> Path | None:
    for d in (state_root(None) / "cache" / "debs", REPO / ".cache" / "debs"):
        debs = sorted(d.glob(KERNEL_DEB_GLOB)) if d.is_dir() else []
        if debs:
            return debs[-1]
    return None


@pytest.fixture(scope="session")
def fc_binary() -> Path:
    from microagent.errors import MicroagentError
    from microagent.host import firecracker_binary as binary

    try:
        return binary.install_pinned()
    except MicroagentError as exc:
        pytest.skip(f"the pinned firecracker binary is not installed and could not be: {exc.message}")


@dataclass(frozen=True)
class Kernel:
    image: Path
    initrd: Path


@pytest.fixture(scope="session")
def fc_kernel(tmp_path_factory: pytest.TempPathFactory) -> Kernel:
    from microagent.errors import MicroagentError
    from microagent.guestinit import find_guest_init
    from microagent.kernels import ensure_initramfs, install_kernel

    root = tmp_path_factory.mktemp("fckernel")
    src = kernel_dir(state_root(None), "firecracker", host_arch())
    dst = kernel_dir(root, "firecracker", host_arch())
    try:
        if (src / "kernel.json").is_file():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("initramfs-*"))
        else:
            deb = _cached_kernel_deb()
            install_kernel(root, "firecracker", deb=deb)  # deb=None: apt download
        initrd = ensure_initramfs(dst, find_guest_init(host_arch()))
    except MicroagentError as exc:
        pytest.skip(f"no firecracker kernel could be installed: {exc.message}")
    return Kernel(dst / "Image", initrd)


def live_processes_under(path: Path) -> list[str]:
    """``pid cmdline`` of live (non-zombie) processes whose cwd or argv mention ``path``."""
    needle = str(path)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rfind(")") + 2:].startswith("Z"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                cwd = ""
        except OSError:
            continue
        if needle in cmdline or cwd == needle or cwd.startswith(needle + "/"):
            found.append(f"{entry.name} {cmdline.strip()} (cwd {cwd})")
    return found


@dataclass
class FC:
    """Calls to the real supervisor executable for one test's state directory."""

    state: Path
    binary: Path
    kernel: Kernel
    rootfs: Path
    env: dict[str, str] = field(default_factory=dict)
    #: run the supervisor inside this network namespace (``nsenter``, not ``ip netns exec``:
    #: the namespaces it creates must be mounted where the next command sees them)
    netns: str = ""

    def config(self, **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {"stateDir": str(self.state), "kernelPath": str(self.kernel.image),
                               "initrdPath": str(self.kernel.initrd), "rootfsPath": str(self.rootfs),
                               "memoryMiB": 128, "cpuCount": 1, "timeoutSeconds": 30.0, "readiness": "vmm"}
        cfg.update(overrides)
        return {k: v for k, v in cfg.items() if v is not None}

    def call(self, command: str, name: str = "ws", *, timeout: float = 60, exec_spec: dict[str, Any] | None = None,
             **overrides: Any) -> dict[str, Any]:
        request: dict[str, Any] = {"command": command,
                                   "identity": {"requestID": f"t-{command}", "runtimeID": name, "role": "workload",
                                                "backend": "firecracker"},
                                   "config": self.config(**overrides)}
        if exec_spec is not None:
            request["exec"] = exec_spec
        env = {**os.environ, "MICROAGENT_FIRECRACKER": str(self.binary),
               "MICROAGENT_FIRECRACKER_ALLOW_NO_KVM": "1", **self.env}
        prefix = ["nsenter", f"--net=/run/netns/{self.netns}", "--"] if self.netns else []
        proc = subprocess.run([*prefix, SUPERVISOR], input=json.dumps(request), capture_output=True, text=True,
                              env=env, timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        doc: dict[str, Any] = json.loads(proc.stdout)
        assert (proc.returncode == 0) == doc["ok"], (proc.returncode, doc)
        return doc

    def ok(self, command: str, name: str = "ws", **overrides: Any) -> dict[str, Any]:
        doc = self.call(command, name, **overrides)
        assert doc["ok"], doc
        return doc

    def runtime_dir(self, name: str = "ws") -> Path:
        return self.state / "run" / name

    def runtime(self, name: str = "ws") -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.runtime_dir(name) / "runtime.json").read_text())
        return data

    def leftovers(self) -> list[str]:
        """Live processes still tied to this test's state directory."""
        return live_processes_under(self.state)


@pytest.fixture(scope="session")
def kvm() -> tuple[bool, str]:
    """``(hardware KVM?, detail)`` of this host."""
    return hardware_kvm()


def _kill_leftovers(lines: list[str]) -> None:
    for line in lines:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture
def fc(tmp_path: Path, fc_binary: Path, fc_kernel: Kernel) -> Iterator[FC]:
    state = tmp_path / "state"
    state.mkdir()
    rootfs = tmp_path / "rootfs.ext4"
    with open(rootfs, "wb") as fh:  # firecracker only opens it: the guest never gets that far here
        fh.truncate(16 << 20)
    yield FC(state=state, binary=fc_binary, kernel=fc_kernel, rootfs=rootfs)
    deadline = time.monotonic() + 3
    while (leftover := live_processes_under(state)) and time.monotonic() < deadline:
        time.sleep(0.05)  # a helper being torn down may take a moment
    _kill_leftovers(leftover)
    assert leftover == [], f"processes left running: {leftover}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    hardware, detail = hardware_kvm()
    if not hardware and any("tests/firecracker/" in str(r.fspath) for r in terminalreporter.stats.get("skipped", [])):
        terminalreporter.write_line(
            f"firecracker guest tests skipped: Debian's stock kernel under firecracker needs hardware KVM ({detail}); "
            "the process-model tests ran against the real firecracker binary, and the guest path runs "
            "through the slow lane (tests/firecracker_slow/)")
