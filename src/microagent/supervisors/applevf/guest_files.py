"""Apple VF boots arm64 guests only: the kernel and the init inside the initramfs must be aarch64.

Virtualization.framework on Apple silicon runs aarch64 guests; an x86_64
kernel or an initramfs carrying the x86_64 ``microagent-init`` would be
accepted by ``VZLinuxBootLoader`` and then fail inside the VM with nothing
but a silent console.  The supervisor refuses them before anything starts:
the kernel's architecture comes from its header, the init's from the ELF
header of ``/init`` in the initramfs (microagent's uncompressed cpio
``newc``, :mod:`microagent.kernels.initramfs`).
"""

from __future__ import annotations

from pathlib import Path

from microagent.errors import Permanent
from microagent.kernels.vmlinux import elf_machine, kernel_architecture

__all__ = ["GUEST_ARCH", "check_guest_files", "initramfs_init_architecture"]

GUEST_ARCH = "aarch64"
INSTALL_HINT = "run 'microagent kernel install --backend apple-vf --arch aarch64' (docs/backends/apple-vf.md)"
NEWC_MAGIC = b"070701"
HEADER_LEN = 110
MAX_ENTRIES = 4096  # microagent's initramfs holds the init, a marker and a few modules


def _pad4(n: int) -> int:
    return n + (-n % 4)


def initramfs_init_architecture(path: Path) -> str:
    """The architecture of ``/init`` in a cpio ``newc`` initramfs.

    Walks the headers with seeks (bounded entry count), reading only the
    init's first bytes.

    :raises Permanent: not an uncompressed newc archive, no ``/init``, or an
        init that is not an x86_64/aarch64 ELF.
    """
    with open(path, "rb") as fh:
        for _ in range(MAX_ENTRIES):
            header = fh.read(HEADER_LEN)
            if len(header) < HEADER_LEN or not header.startswith(NEWC_MAGIC):
                break
            try:
                size, namesize = int(header[54:62], 16), int(header[94:102], 16)
            except ValueError:
                break
            name = fh.read(namesize).rstrip(b"\0")
            fh.seek(_pad4(HEADER_LEN + namesize) - HEADER_LEN - namesize, 1)
            if name == b"TRAILER!!!":
                break
            if name.lstrip(b"./") == b"init":
                try:
                    return elf_machine(fh.read(min(size, 64)))
                except Permanent as exc:
                    raise Permanent(f"initramfs {path}: /init is not a usable guest init ({exc.message})",
                                    INSTALL_HINT) from exc
            fh.seek(_pad4(size), 1)
    raise Permanent(f"initramfs {path} has no /init (or is not an uncompressed cpio newc archive)",
                    "let microagent build the initramfs: " + INSTALL_HINT)


def check_guest_files(kernel_path: str, initrd_path: str) -> None:
    """Refuse a kernel or an initramfs init that is not aarch64.

    :raises NotFound: the kernel does not exist.
    :raises Permanent: naming the file and the architecture it is for.
    """
    arch = kernel_architecture(Path(kernel_path))
    if arch != GUEST_ARCH:
        raise Permanent(f"apple-vf boots {GUEST_ARCH} guests only; kernel {kernel_path} is for {arch}",
                        INSTALL_HINT)
    if initrd_path:
        init_arch = initramfs_init_architecture(Path(initrd_path))
        if init_arch != GUEST_ARCH:
            raise Permanent(f"apple-vf boots {GUEST_ARCH} guests only; the guest init in {initrd_path} is "
                            f"for {init_arch}",
                            "run 'make guest' (it builds the aarch64 init) and start again: the initramfs "
                            "is rebuilt from src/microagent/guest/aarch64/microagent-init")
