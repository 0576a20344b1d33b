"""Guest kernels: install, verify, vmlinux extraction, modules, initramfs.

Modules, named after their data:

- :mod:`~microagent.kernels.store` — the kernel store under
  ``<state_root>/kernels/<backend>/<arch>/`` (install, list, verify, status,
  initramfs cache).
- :mod:`~microagent.kernels.debian` — Debian's cloud kernel package.
- :mod:`~microagent.kernels.vmlinux` — bzImage / arm64 Image / vmlinux ELF.
- :mod:`~microagent.kernels.modules` — the guest's module closure and load order.
- :mod:`~microagent.kernels.initramfs` — the deterministic cpio ``newc`` writer.

Only the standard library is imported; Debian tools (``apt-get``,
``dpkg-deb``, ``lz4``) are run when an install needs them.
"""

from microagent.kernels.debian import DebianPackage, UnpackedKernel, resolve_kernel_package
from microagent.kernels.initramfs import CpioEntry, build_initramfs, write_cpio
from microagent.kernels.modules import DEFAULT_GUEST_MODULES, KernelModule, load_module_index, resolve_modules
from microagent.kernels.store import (
    KERNEL_BACKENDS,
    FileCheck,
    KernelRecord,
    RecordedFile,
    VerifyResult,
    ensure_initramfs,
    install_kernel,
    kernel_status,
    list_kernels,
    load_kernel,
    verify_kernel,
)
from microagent.kernels.vmlinux import KernelFormat, detect_kernel_format, extract_vmlinux

__all__ = [
    "DEFAULT_GUEST_MODULES",
    "KERNEL_BACKENDS",
    "CpioEntry",
    "DebianPackage",
    "FileCheck",
    "KernelFormat",
    "KernelModule",
    "KernelRecord",
    "RecordedFile",
    "UnpackedKernel",
    "VerifyResult",
    "build_initramfs",
    "detect_kernel_format",
    "ensure_initramfs",
    "extract_vmlinux",
    "install_kernel",
    "kernel_status",
    "list_kernels",
    "load_kernel",
    "load_module_index",
    "resolve_kernel_package",
    "resolve_modules",
    "verify_kernel",
    "write_cpio",
]
