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

TYPE_CHECKING = False
if TYPE_CHECKING:  # what mypy sees; at run time __getattr__ below imports on first use
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

# Each name is imported from its module on first use (PEP 562): a boot needs only the
# store, while installs pull in Debian's package handling and the cpio writer.
_HOME = {
    "DebianPackage": "debian", "UnpackedKernel": "debian", "resolve_kernel_package": "debian",
    "CpioEntry": "initramfs", "build_initramfs": "initramfs", "write_cpio": "initramfs",
    "DEFAULT_GUEST_MODULES": "modules", "KernelModule": "modules", "load_module_index": "modules",
    "resolve_modules": "modules",
    "KERNEL_BACKENDS": "store", "FileCheck": "store", "KernelRecord": "store", "RecordedFile": "store",
    "VerifyResult": "store", "ensure_initramfs": "store", "install_kernel": "store",
    "kernel_status": "store", "list_kernels": "store", "load_kernel": "store", "verify_kernel": "store",
    "KernelFormat": "vmlinux", "detect_kernel_format": "vmlinux", "extract_vmlinux": "vmlinux",
}  # fmt: skip


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


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
