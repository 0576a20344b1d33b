"""What this host can do: OS, architecture, KVM flavour, VMM binaries, tools.

Owns probing only (reading /sys, /proc, running ``--version``); deciding what
to do with the facts is :mod:`microagent.host.selection` and
:mod:`microagent.host.doctor`.  Every probe is cheap and side-effect free.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from msgspec import Struct, field, to_builtins

from microagent.paths import host_arch


class Tool(Struct):
    """An executable found (or not) on this host."""

    name: str
    path: str = ""
    version: str = ""
    error: str = ""

    @property
    def available(self) -> bool:
        return bool(self.path)


class KvmInfo(Struct):
    present: bool
    kind: str  # hardware | paravirtual | absent | unusable
    detail: str


class HostFacts(Struct):
    os: str
    architecture: str
    kvm: KvmInfo
    vhost_vsock: bool
    tun: bool
    user_namespaces: bool
    tools: dict[str, Tool] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return to_builtins(self)


def host_os() -> str:
    """``linux``, ``darwin``, ``windows`` or whatever ``sys.platform`` says."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "win32":
        return "windows"
    return sys.platform


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def probe_kvm(sys_module: Path = Path("/sys/module"), dev: Path = Path("/dev/kvm")) -> KvmInfo:
    """Classify /dev/kvm: hardware (VT-x/AMD-V), paravirtual (PVM) or absent."""
    if not dev.exists():
        return KvmInfo(False, "absent", f"{dev} does not exist")
    if (sys_module / "kvm_pvm").exists():
        return KvmInfo(True, "paravirtual",
                       "/dev/kvm is paravirtual (kvm_pvm): stock guest kernels cannot boot under it")
    if not os.access(dev, os.R_OK | os.W_OK):
        return KvmInfo(True, "unusable", f"{dev} is not readable and writable by this user")
    flags = _cpu_flags()
    if (sys_module / "kvm_intel").exists() or (sys_module / "kvm_amd").exists() or flags & {"vmx", "svm"}:
        return KvmInfo(True, "hardware", "/dev/kvm backed by hardware virtualization")
    if host_arch() == "aarch64":
        return KvmInfo(True, "hardware", "/dev/kvm present on arm64")
    return KvmInfo(True, "paravirtual", "/dev/kvm present but the CPU has no vmx/svm flag")


def _version_of(argv: list[str]) -> tuple[str, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", str(exc)
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return (text[0].strip() if text else ""), ""


def probe_tool(name: str, version_args: tuple[str, ...] = ("--version",), path: str | None = None,
               *, version: bool = True) -> Tool:
    """Find ``name``; with ``version`` also run it once to read its version (costs a process)."""
    found = path or shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        return Tool(name=name, error=f"{name} not found on PATH")
    if not version:
        return Tool(name=name, path=found)
    version_text, error = _version_of([found, *version_args])
    return Tool(name=name, path=found, version=version_text, error=error)
    return Tool(name=name, path=found, version=version, error=error)


def qemu_binary_name(arch: str | None = None) -> str:
    return {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}.get(
        arch or host_arch(), f"qemu-system-{arch or host_arch()}"
    )


def probe_firecracker(*, version: bool = True) -> Tool:
    from microagent.errors import MicroagentError
    from microagent.host.firecracker_binary import resolve_firecracker

    try:
        path = resolve_firecracker()
    except MicroagentError as exc:
        return Tool(name="firecracker", error=exc.message)
    return probe_tool("firecracker", path=str(path), version=version)


def probe_user_namespaces() -> bool:
    try:
        return Path("/proc/sys/user/max_user_namespaces").read_text().strip() != "0"
    except OSError:
        return False


def detect(*, versions: bool = True, tools: Collection[str] | None = None) -> HostFacts:
    """Probe the host once.

    :param versions: also run each tool for its version (``host``/``doctor``);
        the boot path leaves this off and spawns no processes.
    :param tools: probe only these of ``qemu``, ``firecracker``, ``pasta``, ``mke2fs``,
        ``debugfs`` and ``nft`` (default: all); a backend's boot asks for its VMM only.
    """
    facts = HostFacts(
        os=host_os(),
        architecture=host_arch(),
        kvm=probe_kvm() if host_os() == "linux" else KvmInfo(False, "absent", "not a linux host"),
        vhost_vsock=Path("/dev/vhost-vsock").exists(),
        tun=Path("/dev/net/tun").exists(),
        user_namespaces=probe_user_namespaces(),
    )
    if facts.os == "linux":
        probes: dict[str, Callable[[], Tool]] = {
            "qemu": lambda: probe_tool(qemu_binary_name(facts.architecture), version=versions),
            "firecracker": lambda: probe_firecracker(version=versions),
            "pasta": lambda: probe_tool("pasta", version=versions),
            "mke2fs": lambda: probe_tool("mke2fs", ("-V",), version=versions),
            "debugfs": lambda: probe_tool("debugfs", ("-V",), version=versions),
            "nft": lambda: probe_tool("nft", ("--version",), version=versions),
        }
        for name, probe in probes.items():
            if tools is None or name in tools:
                facts.tools[name] = probe()
    return facts
