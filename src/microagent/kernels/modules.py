"""Kernel modules the guest needs, and the order to load them in.

Owns reading a kernel's module tree (``lib/modules/<release>/``): the
``modules.dep`` dependency file when present, otherwise each module's own
``.modinfo`` ``depends=`` field (Debian's kernel package ships no
``modules.dep``: ``depmod`` writes it at install time), plus
``modules.builtin`` to skip drivers compiled into the kernel.  It resolves the
closure of the modules the guest initramfs loads, dependencies first, and
writes them out as plain ``NN-<name>.ko`` files so that sorted file names are
the load order.  Building the initramfs is :mod:`microagent.kernels.initramfs`.
"""

from __future__ import annotations

import errno
import lzma
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from msgspec import Struct, field

from microagent.errors import NotFound, Permanent, ResourceExhausted

__all__ = [
    "DEFAULT_GUEST_MODULES",
    "GUEST_MODULES_BY_BACKEND",
    "KernelModule",
    "ModuleIndex",
    "load_conditions",
    "load_module_index",
    "modinfo",
    "modinfo_items",
    "module_bytes",
    "module_name",
    "parse_modules_builtin",
    "parse_modules_dep",
    "resolve_modules",
    "write_modules",
]

# What guest init expects to find: the virtio-mmio transport, block, console
# (virtio-serial), net and vsock (docs/architecture.md, "Facts about our hosts").
# Dependencies (failover, net_failover, vmw_vsock_virtio_transport_common) are
# pulled in by closure.
DEFAULT_GUEST_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "vsock",
    "vmw_vsock_virtio_transport",
)
# Apple VF attaches virtio devices over PCI, not MMIO.
APPLEVF_GUEST_MODULES: tuple[str, ...] = (
    "virtio_ring", "virtio", "virtio_pci", "virtio_blk", "virtio_console", "virtio_net",
    "vsock", "vmw_vsock_virtio_transport", "virtiofs",
)
# Hyper-V: VMBus, SCSI disks (storvsc), hv_sock for the channel, netvsc, and
# hv_utils (the shutdown integration service that makes `stop` work).
HYPERV_GUEST_MODULES: tuple[str, ...] = (
    "hv_vmbus", "hv_storvsc", "sd_mod", "vsock", "hv_sock", "hv_netvsc", "hv_utils",
)
# QEMU shares host folders over virtiofs (docs/volumes.md; the cloud kernel has no 9p);
# fuse comes in by closure.
QEMU_GUEST_MODULES: tuple[str, ...] = (*DEFAULT_GUEST_MODULES, "virtiofs")
GUEST_MODULES_BY_BACKEND: dict[str, tuple[str, ...]] = {
    "qemu": QEMU_GUEST_MODULES,
    "firecracker": DEFAULT_GUEST_MODULES,
    "apple-vf": APPLEVF_GUEST_MODULES,
    "windows-hyperv": HYPERV_GUEST_MODULES,
}
# Wanted names that may be neither a module nor listed as built in (older
# kernels fold virtio/virtio_ring into the core without a modules.builtin line).
OPTIONAL_MODULES: frozenset[str] = frozenset({"virtio", "virtio_ring"})

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str | os.PathLike[str]) -> str:
    """The module name of a file: basename without ``.ko[.xz|.zst|.gz]``, ``-`` as ``_``.

    >>> module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz")
    'virtio_rng'
    """
    base = os.path.basename(os.fspath(path))
    for suffix in sorted(MODULE_SUFFIXES, key=len, reverse=True):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Parse ``modules.dep``: ``name -> (relative path, [dependency names])``.

    Each line is ``path.ko: dep1.ko dep2.ko``; depmod lists the full transitive
    set of dependencies.

    :raises Permanent: a line without the ``:`` separator.
    """
    out: dict[str, tuple[str, list[str]]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, rest = line.partition(":")
        if not sep:
            raise Permanent(f"modules.dep line {lineno} has no ':' separator", "regenerate it with depmod")
        out[module_name(path)] = (path.strip(), [module_name(dep) for dep in rest.split()])
    return out


def parse_modules_builtin(text: str) -> frozenset[str]:
    """Parse ``modules.builtin`` (one ``kernel/…/name.ko`` per line) into module names."""
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


def _decompress_zstd(data: bytes, origin: str) -> bytes:
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
    except ImportError:
        exe = shutil.which("zstd")
        if exe is None:
            raise NotFound(
                f"'zstd' is needed to decompress {origin} and is not on PATH", "install it: apt-get install zstd"
            ) from None
        proc = subprocess.run([exe, "-dc"], input=data, capture_output=True, check=False)
        if proc.returncode != 0:
            raise Permanent(f"{origin} is not valid zstd data", "the module file is corrupt; reinstall the kernel")
        return proc.stdout
    try:
        return bytes(zstd.decompress(data))
    except Exception as exc:  # zstd.ZstdError; the module is optional at import time
        raise Permanent(f"{origin} is not valid zstd data", "the module file is corrupt; reinstall the kernel") from exc


def module_bytes(path: Path) -> bytes:
    """The plain ELF bytes of a module file, decompressing ``.xz``/``.zst``/``.gz``.

    :raises NotFound: the file is missing, or ``zstd`` is needed and missing.
    :raises Permanent: unreadable or corrupt compressed data.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"kernel module {path} does not exist", "reinstall the kernel") from exc
    except OSError as exc:
        raise Permanent(f"cannot read kernel module {path}: {exc.strerror}", "check its permissions") from exc
    name = path.name
    try:
        if name.endswith(".xz"):
            return lzma.decompress(data)
        if name.endswith(".gz"):
            import gzip  # rare: Debian ships .ko or .ko.xz

            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise Permanent(f"kernel module {path} is corrupt: {exc}", "reinstall the kernel") from exc
    if name.endswith(".zst"):
        return _decompress_zstd(data, str(path))
    return data


def modinfo_items(data: bytes) -> list[tuple[str, str]]:
    """Every ``key=value`` of a plain ELF64 little-endian module's ``.modinfo``, in order.

    :raises Permanent: not an ELF64 little-endian relocatable module, or no
        ``.modinfo`` section.
    """
    if len(data) < 64 or not data.startswith(b"\x7fELF") or data[4] != 2 or data[5] != 1:
        raise Permanent("kernel module is not a 64-bit little-endian ELF", "reinstall the kernel")
    try:
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
        names_off = sections[shstrndx][4]
        for name_off, _type, _flags, _addr, off, size in sections:
            start = names_off + name_off
            if data[start : data.index(b"\x00", start)] == b".modinfo":
                out: list[tuple[str, str]] = []
                for item in data[off : off + size].split(b"\x00"):
                    key, sep, value = item.partition(b"=")
                    if sep:
                        out.append((key.decode("ascii", "replace"), value.decode("utf-8", "replace")))
                return out
    except (struct.error, IndexError, ValueError) as exc:
        raise Permanent(f"kernel module has a corrupt ELF section table: {exc}", "reinstall the kernel") from exc
    raise Permanent("kernel module has no .modinfo section", "reinstall the kernel")


def modinfo(data: bytes) -> dict[str, str]:
    """The ``.modinfo`` key/value pairs of a module; a repeated key (``alias=``) keeps its first value.

    :raises Permanent: as :func:`modinfo_items`.
    """
    out: dict[str, str] = {}
    for key, value in modinfo_items(data):
        out.setdefault(key, value)
    return out


_VIRTIO_ALIAS = re.compile(r"virtio:d([0-9A-Fa-f]{8})v")


def load_conditions(modules: Sequence[tuple[str, bytes]]) -> list[frozenset[int] | None]:
    """For each module (``(name, plain .ko bytes)`` in load order): the virtio device IDs
    it is needed for, or ``None`` when guest init loads it whatever devices the VM has.

    A virtio driver (an ``alias=virtio:dNNNNNNNNv*``) is needed for its devices, and a
    dependency for the devices of the modules that use it; a module anything
    unconditional uses, or that no driver needs (a bus driver such as virtio_mmio),
    is unconditional.  A module whose ``.modinfo`` cannot be read is unconditional.
    """
    infos: list[list[tuple[str, str]] | None] = []
    for _name, data in modules:
        try:
            infos.append(modinfo_items(data))
        except Permanent:
            infos.append(None)
    users: dict[str, list[int]] = {}
    for i, items in enumerate(infos):
        for key, value in items or ():
            if key == "depends":
                for dep in filter(None, value.split(",")):
                    users.setdefault(dep.replace("-", "_"), []).append(i)
    out: list[frozenset[int] | None] = [None] * len(modules)
    for i in reversed(range(len(modules))):  # users come after their dependencies
        items = infos[i]
        own = {int(m.group(1), 16) for key, value in items or () if key == "alias"
               for m in [_VIRTIO_ALIAS.match(value)] if m}
        needed_by = users.get(modules[i][0], [])
        if items is None or (not own and not needed_by) or any(out[u] is None for u in needed_by):
            continue
        out[i] = frozenset(own).union(*(out[u] or () for u in needed_by))
    return out


class KernelModule(Struct, frozen=True):
    """One module of a kernel tree: its name, file and direct dependencies."""

    name: str
    path: Path  # absolute; may be compressed (.ko.xz / .ko.zst / .ko.gz)
    depends: tuple[str, ...]


class ModuleIndex(Struct):
    """The modules of one kernel release, with dependencies read on demand."""

    modules_dir: Path
    paths: dict[str, Path]
    builtin: frozenset[str] = frozenset()
    dep_table: dict[str, tuple[str, ...]] | None = None  # from modules.dep when it exists
    _modinfo_cache: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def release(self) -> str:
        """The kernel release the tree belongs to (the directory name)."""
        return self.modules_dir.name

    def __contains__(self, name: object) -> bool:
        return name in self.paths

    def depends(self, name: str) -> tuple[str, ...]:
        """Direct (or, from modules.dep, transitive) dependencies of a module.

        :raises NotFound: no such module in the tree.
        :raises Permanent: the module file is corrupt.
        """
        if name not in self.paths:
            raise NotFound(f"kernel module {name} is not in {self.modules_dir}", "use a kernel that ships it")
        if self.dep_table is not None:
            return self.dep_table.get(name, ())
        if name not in self._modinfo_cache:
            info = modinfo(module_bytes(self.paths[name]))
            self._modinfo_cache[name] = tuple(d for d in info.get("depends", "").split(",") if d)
        return self._modinfo_cache[name]

    def module(self, name: str) -> KernelModule:
        """The :class:`KernelModule` for ``name``.

        :raises NotFound: no such module in the tree.
        :raises Permanent: the module file is corrupt.
        """
        deps = self.depends(name)
        return KernelModule(name, self.paths[name], deps)


def load_module_index(modules_dir: Path) -> ModuleIndex:
    """Index the module tree ``lib/modules/<release>/``.

    Uses ``modules.dep`` when present; otherwise scans for ``*.ko*`` files and
    reads dependencies from each module's ``.modinfo`` as needed.

    :raises NotFound: the directory does not exist.
    :raises Permanent: ``modules.dep`` is malformed.
    """
    if not modules_dir.is_dir():
        raise NotFound(f"kernel module directory {modules_dir} does not exist", "check the kernel package")
    builtin_file = modules_dir / "modules.builtin"
    builtin = parse_modules_builtin(builtin_file.read_text()) if builtin_file.is_file() else frozenset()
    dep_file = modules_dir / "modules.dep"
    if dep_file.is_file():
        table = parse_modules_dep(dep_file.read_text())
        paths = {name: modules_dir / rel for name, (rel, _deps) in table.items()}
        deps = {name: tuple(d) for name, (_rel, d) in table.items()}
        return ModuleIndex(modules_dir, paths, builtin, deps)
    paths = {}
    for root, dirs, files in os.walk(modules_dir):
        dirs.sort()
        for fname in sorted(files):
            if fname.endswith(MODULE_SUFFIXES):
                paths.setdefault(module_name(fname), Path(root) / fname)
    return ModuleIndex(modules_dir, paths, builtin, None)


def resolve_modules(
    index: ModuleIndex,
    wanted: Iterable[str] = DEFAULT_GUEST_MODULES,
    *,
    optional: Iterable[str] = OPTIONAL_MODULES,
) -> list[KernelModule]:
    """The closure of ``wanted`` in load order: every module after its dependencies.

    Built-in modules are skipped.  The order is deterministic: ``wanted`` in
    the given order, each preceded by its not-yet-listed dependencies (visited
    in name order).

    :param optional: wanted names that may be absent without error.
    :raises Permanent: a wanted module (not optional) or a dependency is neither
        a module nor built in, or the dependencies form a cycle.
    """
    optional_set = frozenset(optional)
    order: list[KernelModule] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str, required_by: str | None) -> None:
        if name in done or name in index.builtin:
            return
        if name not in index:
            if required_by is None and name in optional_set:
                return
            why = f" (needed by {required_by})" if required_by else ""
            raise Permanent(
                f"kernel {index.release} has no module {name}{why} and does not list it as built in",
                "use a kernel with virtio-mmio, virtio-blk/net/console and vsock support (Debian's cloud kernel)",
            )
        if name in active:
            raise Permanent(
                f"kernel modules have a dependency cycle: {' -> '.join([*active, name])}", "check the kernel tree"
            )
        active.append(name)
        deps = index.depends(name)
        for dep in sorted(deps):
            visit(dep, name)
        active.pop()
        done.add(name)
        order.append(KernelModule(name, index.paths[name], deps))

    for name in wanted:
        visit(name.replace("-", "_"), None)
    return order


def write_modules(modules: Sequence[KernelModule], dest: Path) -> list[Path]:
    """Write modules as plain ``dest/NN-<name>.ko`` files (NN = load order from 00).

    :returns: the written files, in load order.
    :raises NotFound: a module file is missing (or ``zstd`` is).
    :raises Permanent: a module file is corrupt, or ``dest`` is not writable.
    :raises ResourceExhausted: the disk is full.
    """
    if len(modules) > 100:
        raise Permanent(f"{len(modules)} modules do not fit two-digit load order names", "load fewer modules")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for i, mod in enumerate(modules):
        out = dest / f"{i:02d}-{mod.name}.ko"
        data = module_bytes(mod.path)
        try:
            out.write_bytes(data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ResourceExhausted(f"disk full writing {out}", "free some disk space") from exc
            raise Permanent(f"cannot write {out}: {exc.strerror}", "check the directory permissions") from exc
        written.append(out)
    return written
