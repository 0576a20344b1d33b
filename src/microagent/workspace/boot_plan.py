"""Everything a boot needs, checked before anything is built.

:func:`plan_boot` resolves backend → image reference → kernel → guest init →
initramfs in that order and fails at the first missing piece, so a request
for a backend of another host OS, an unknown image or a missing kernel costs
nothing but the error.  The plan then builds the base disk (cached) and
copies it for the workspace.
"""

from __future__ import annotations

from pathlib import Path

from msgspec import Struct, field

from microagent.errors import NotFound
from microagent.images.resolve import BaseImage, check_reference
from microagent.paths import host_arch, kernel_dir, runtime_dir, state_root, workspace_dir
from microagent.vmkit.types import Config, Disk, Network, Service, Share


class BootPlan(Struct):
    backend: str
    name: str
    state_root: Path
    image_ref: str
    kernel_path: Path
    initrd_path: Path
    guest_init: Path
    memory_mib: int
    cpus: int
    boot_timeout: float
    network: Network = field(default_factory=Network)
    service: Service | None = None  # started by guest init on every boot (docs/services.md)
    disks: tuple[Disk, ...] = ()  # volumes (docs/volumes.md)
    shares: tuple[Share, ...] = ()  # host folders
    arch: str = field(default_factory=host_arch)  # the guest's: its kernel, init and image
    image: BaseImage | None = None  # resolved after the plan (the image may need a pull)

    @property
    def disk_path(self) -> Path:
        return workspace_dir(self.state_root, self.name) / "rootfs.ext4"

    @property
    def runtime_dir(self) -> Path:
        return runtime_dir(self.state_root, self.name)

    @property
    def config(self) -> Config:
        return Config(
            stateDir=str(self.state_root),
            kernelPath=str(self.kernel_path),
            rootfsPath=str(self.disk_path),
            initrdPath=str(self.initrd_path),
            memoryMiB=self.memory_mib,
            cpuCount=self.cpus,
            hostname=self.name,
            timeoutSeconds=self.boot_timeout,
            network=self.network,
            stopSignal=self.image.config.stop_signal_number() if self.image is not None else 15,
            service=self.service,
            disks=self.disks, shares=self.shares,
        )


def resolve_backend(requested: str | None) -> str:
    """The backend to use; an explicit one is checked against the host OS only.

    :raises Unsupported: for a backend of another host OS.
    :raises InvalidRequest: for an unknown backend name.
    """
    import os

    from microagent.host.selection import check_backend_runs_here, host_default_backend

    explicit = requested or os.environ.get("MICROAGENT_BACKEND")
    if explicit:
        check_backend_runs_here(explicit)
        return explicit
    return host_default_backend().backend


def find_kernel(root: Path, backend: str, arch: str | None = None) -> Path:
    """:raises NotFound: when no kernel is installed for ``backend`` (and ``arch``)."""
    image = kernel_dir(root, backend, arch) / "Image"
    if not image.is_file():
        arch_flag = f" --arch {arch}" if arch and arch != host_arch() else ""
        raise NotFound(f"no kernel installed for backend {backend} at {image}",
                       f"run 'microagent kernel install --backend {backend}{arch_flag}'")
    return image


def check_arch(arch: str | None) -> str:
    """The guest architecture in microagent's spelling (``arm64`` → ``aarch64``).

    :raises InvalidRequest: for an architecture microagent has no guest for.
    """
    from microagent.errors import InvalidRequest
    from microagent.paths import ARCH_ALIASES

    if arch is None:
        return host_arch()
    name = ARCH_ALIASES.get(arch.lower())
    if name is None:
        raise InvalidRequest(f"unknown guest architecture {arch!r}", "use --arch x86_64 or --arch aarch64")
    return name


def plan_boot(image: str, name: str, *, backend: str | None, state_dir: str | Path | None,
              memory_mib: int, cpus: int, boot_timeout: float, arch: str | None = None) -> BootPlan:
    """Check every input of a boot; build nothing.

    :param arch: the guest architecture (default: the host's); another one is
        emulated where the backend can (QEMU's TCG).
    :raises MicroagentError: the first missing or invalid input.
    """
    chosen = resolve_backend(backend)
    check_reference(image)
    arch = check_arch(arch)
    if arch != host_arch() and chosen != "qemu":
        from microagent.errors import Unsupported

        raise Unsupported(f"backend {chosen} runs only {host_arch()} guests on this host, not {arch}",
                          f"use --backend qemu to emulate {arch}, or a {arch} host")
    root = state_root(state_dir)
    kernel = find_kernel(root, chosen, arch)
    from microagent.guestinit import find_guest_init
    from microagent.kernels import ensure_initramfs

    guest_init = find_guest_init(arch)
    initrd = ensure_initramfs(kernel.parent, guest_init)
    return BootPlan(backend=chosen, name=name, state_root=root, image_ref=image, kernel_path=kernel,
                    initrd_path=initrd, guest_init=guest_init, memory_mib=memory_mib, cpus=cpus,
                    boot_timeout=boot_timeout, arch=arch)
