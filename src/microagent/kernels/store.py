"""The kernel store: ``<state_root>/kernels/<backend>/<arch>/``.

Owns installing a guest kernel for a backend, recording what was installed
(``kernel.json``), verifying it, reporting its status for ``doctor``, and
building the per-kernel initramfs cache.  An installed kernel directory::

    kernels/<backend>/<arch>/
      Image                    what the VMM boots: the bzImage for qemu, the
                               uncompressed vmlinux ELF for firecracker (x86_64),
                               the uncompressed arm64 Image on aarch64
      bzImage                  firecracker/x86_64 only: the original bzImage
      modules/NN-<name>.ko     guest modules, plain, NN = load order
      kernel.json              the record (see :class:`KernelRecord`)
      initramfs-<hash12>.cpio  built on demand by :func:`ensure_initramfs`

An install is staged in a temporary directory beside the target and renamed
into place, so a failed install (corrupt file, wrong architecture, network)
leaves the previously installed kernel untouched.  Installs of one
backend/arch are serialised by a lock file ``.<arch>.lock`` beside it.

A kernel installed with ``from_file`` and no ``modules_from_deb`` records
``modules: []``; its status says so, and it boots only if the drivers the
guest needs are built in.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from microagent.digests import sha256_file
from microagent.errors import Conflict, NotFound, Permanent, ResourceExhausted, Unsupported
from microagent.kernels import modules as kmodules
from microagent.kernels.vmlinux import KernelFormat, detect_kernel_format, kernel_release, vmlinux_from_bzimage
from microagent.paths import ARCH_ALIASES, host_arch, kernel_dir

if TYPE_CHECKING:
    from microagent.kernels import debian

__all__ = [
    "KERNEL_BACKENDS",
    "FileCheck",
    "KernelRecord",
    "RecordedFile",
    "VerifyResult",
    "ensure_initramfs",
    "install_kernel",
    "kernel_status",
    "list_kernels",
    "load_kernel",
    "verify_kernel",
]

KERNEL_BACKENDS = ("qemu", "firecracker", "apple-vf", "windows-hyperv")
KERNEL_JSON = "kernel.json"
SCHEMA_VERSION = 1
INITRAMFS_FORMAT = "microagent-initramfs-v2"  # v2: modules/conditions
_ARCH_NAMES = {"x86_64": "x86_64", "aarch64": "aarch64"}
_FORMAT_WORDS = {
    KernelFormat.BZIMAGE: "an x86_64 bzImage",
    KernelFormat.ARM64_IMAGE: "an arm64 Image",
    KernelFormat.ARM64_IMAGE_GZ: "a gzip-compressed arm64 Image",
    KernelFormat.ELF: "a vmlinux ELF",
}


class RecordedFile(Struct, frozen=True):
    """A file of an installed kernel, relative to its directory, with its sha256."""

    path: str
    sha256: str


class KernelRecord(Struct, frozen=True):
    """The contents of ``kernel.json`` plus the directory it was read from.

    :ivar image_format: ``bzImage``, ``vmlinux`` or ``arm64-Image``: what ``Image`` is.
    :ivar source: ``{"type": "deb", "package", "version", ...}``,
        ``{"type": "file", "path", "sha256"}`` (plus ``modules_from`` when set) or
        ``{"type": "build", "package", "version", "sha256", "fragmentSha256", ...}``
        (``microagent kernel build``, :mod:`microagent.kernels.build`).
    :ivar modules: ``[{"name", "path", "sha256"}]`` in load order.
    """

    backend: str
    architecture: str
    version: str
    image_format: str
    source: dict[str, Any]
    files: dict[str, RecordedFile]
    modules: list[dict[str, str]]
    installed_at: str
    directory: Path  # where it was read from: equality leaves it out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KernelRecord) and self.to_json() == other.to_json()

    @property
    def image(self) -> Path:
        """The file the VMM boots."""
        return self.directory / self.files["Image"].path

    @property
    def module_files(self) -> list[Path]:
        """The module files in load order."""
        return [self.directory / m["path"] for m in self.modules]

    def to_json(self) -> dict[str, Any]:
        """The ``kernel.json`` document."""
        return {
            "schema": SCHEMA_VERSION,
            "backend": self.backend,
            "architecture": self.architecture,
            "version": self.version,
            "image_format": self.image_format,
            "source": self.source,
            "files": {k: {"path": v.path, "sha256": v.sha256} for k, v in self.files.items()},
            "modules": self.modules,
            "installed_at": self.installed_at,
        }

    @staticmethod
    def from_json(data: dict[str, Any], directory: Path) -> "KernelRecord":
        """Rebuild a record from ``kernel.json``.

        :raises Permanent: missing or mistyped fields, or a newer schema.
        """
        try:
            if int(data.get("schema", 1)) > SCHEMA_VERSION:
                raise Permanent(
                    f"{directory / KERNEL_JSON} has schema {data['schema']}, newer than this microagent",
                    "upgrade microagent or reinstall the kernel",
                )
            files = {str(k): RecordedFile(str(v["path"]), str(v["sha256"])) for k, v in data["files"].items()}
            if "Image" not in files:
                raise KeyError("files.Image")
            modules = [{"name": str(m["name"]), "path": str(m["path"]), "sha256": str(m["sha256"])}
                       for m in data["modules"]]  # fmt: skip
            return KernelRecord(
                backend=str(data["backend"]),
                architecture=str(data["architecture"]),
                version=str(data.get("version", "")),
                image_format=str(data.get("image_format", "")),
                source=dict(data.get("source") or {}),
                files=files,
                modules=modules,
                installed_at=str(data.get("installed_at", "")),
                directory=directory,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Permanent(
                f"{directory / KERNEL_JSON} is malformed ({exc})", "reinstall the kernel: microagent kernel install"
            ) from exc


class FileCheck(Struct, frozen=True):
    """One file's verification: ``status`` is ``ok``, ``missing`` or ``mismatch``."""

    name: str
    path: Path
    expected: str
    actual: str | None
    status: str


class VerifyResult(Struct, frozen=True):
    """The outcome of :func:`verify_kernel`."""

    backend: str
    architecture: str
    path: Path
    checks: list[FileCheck]

    @property
    def ok(self) -> bool:
        """True when every recorded file is present with its recorded sha256."""
        return all(c.status == "ok" for c in self.checks)

    @property
    def problems(self) -> list[FileCheck]:
        """The checks that failed."""
        return [c for c in self.checks if c.status != "ok"]


def _normalise_arch(arch: str | None) -> str:
    name = ARCH_ALIASES.get((arch or host_arch()).lower(), (arch or "").lower())
    if name not in _ARCH_NAMES:
        raise Unsupported(f"kernel architecture {arch!r} is not supported", "use x86_64 or aarch64")
    return name


def _check_backend(backend: str) -> None:
    if backend not in KERNEL_BACKENDS:
        raise Unsupported(
            f"kernel install for backend {backend!r} is not implemented (only {', '.join(KERNEL_BACKENDS)})",
            f"use --backend {' or '.join(KERNEL_BACKENDS)}",
        )


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def _install_lock(parent: Path, arch: str) -> Iterator[None]:
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f".{arch}.lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Conflict(
                f"another kernel install for {parent.name}/{arch} is running", "wait for it to finish and retry"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _recover_interrupted_swap(parent: Path, arch: str) -> None:
    """If an install died between its two renames, put the old kernel back."""
    target = parent / arch
    olds = sorted(parent.glob(f".{arch}.old-*"))
    if not target.exists():
        for old in reversed(olds):
            if (old / KERNEL_JSON).is_file():
                os.replace(old, target)
                olds.remove(old)
                break
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    for stale in parent.glob(f".{arch}.install-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _wrong_arch(path: Path, fmt: KernelFormat, found: str, want: str) -> Permanent:
    return Permanent(
        f"kernel file {path} is {_FORMAT_WORDS[fmt]} for {found}, not {want}",
        f"use a {want} kernel, or install it for its own architecture with --arch {found}",
    )


def _place_image(src: Path, fmt: KernelFormat, backend: str, arch: str, staging: Path) -> str:
    """Copy/convert the kernel into ``staging``; returns the image format recorded.

    :raises Permanent: wrong architecture, corrupt input, or an unusable format
        for the backend.
    :raises NotFound: a decompressor tool is missing.
    """
    found = fmt.architecture(src)
    if found != arch:
        raise _wrong_arch(src, fmt, found, arch)
    image = staging / "Image"
    if fmt is KernelFormat.BZIMAGE:
        data = src.read_bytes()
        if backend == "firecracker":
            image.write_bytes(vmlinux_from_bzimage(data))
            (staging / "bzImage").write_bytes(data)
            return "vmlinux"
        vmlinux_from_bzimage(data)  # validates the payload: a corrupt bzImage fails here, not at boot
        image.write_bytes(data)
        return "bzImage"
    if fmt is KernelFormat.ELF:
        if arch != "x86_64":
            raise Permanent(
                f"kernel file {src} is an aarch64 vmlinux ELF; aarch64 VMMs boot the arm64 Image",
                "pass arch/arm64/boot/Image (or Debian's vmlinuz) instead",
            )
        shutil.copyfile(src, image)
        return "vmlinux"
    if fmt is KernelFormat.ARM64_IMAGE_GZ:
        try:
            image.write_bytes(zlib.decompressobj(wbits=31).decompress(src.read_bytes()))
        except zlib.error as exc:
            raise Permanent(f"kernel file {src} is corrupt gzip: {exc}", "download the kernel again") from exc
        return "arm64-Image"
    shutil.copyfile(src, image)
    return "arm64-Image"


def _modules_from_unpacked(unpacked: debian.UnpackedKernel, release: str, staging: Path,
                           backend: str = "qemu") -> list[dict[str, str]]:
    if release and unpacked.release != release:
        raise Permanent(
            f"modules in {unpacked.package.name} are for kernel {unpacked.release}, the kernel is {release}",
            "pass the .deb that the kernel came from",
        )
    index = kmodules.load_module_index(unpacked.modules_dir)
    resolved = kmodules.resolve_modules(index, kmodules.GUEST_MODULES_BY_BACKEND[backend])
    written = kmodules.write_modules(resolved, staging / "modules")
    return [
        {"name": mod.name, "path": f"modules/{out.name}", "sha256": sha256_file(out)}
        for mod, out in zip(resolved, written)
    ]


def _swap_into_place(staging: Path, target: Path) -> None:
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    had_old = target.exists()
    if had_old:
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        if had_old:
            os.replace(old, target)
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


def install_kernel(
    state_root: Path,
    backend: str,
    *,
    deb: Path | None = None,
    from_file: Path | None = None,
    modules_from_deb: Path | None = None,
    arch: str | None = None,
    source: dict[str, Any] | None = None,
) -> KernelRecord:
    """Install a guest kernel for ``backend`` into ``<state_root>/kernels/<backend>/<arch>/``.

    Sources, in order of precedence:

    - ``from_file``: a bzImage, vmlinux ELF or arm64 Image.  Modules come from
      ``modules_from_deb`` (a linux-image .deb of the same release) when given;
      otherwise ``modules: []`` is recorded and the guest must have the virtio
      drivers built in.
    - ``deb``: a linux-image .deb file (kernel and modules).
    - neither: Debian's ``linux-image-cloud-<debarch>``, downloaded with apt into
      ``<state_root>/cache/debs/`` (reused when size and sha256 match).

    For ``qemu`` ``Image`` is the bzImage; for ``firecracker`` it is the
    uncompressed vmlinux ELF with the ``bzImage`` kept beside it.

    :param arch: ``x86_64``/``aarch64`` (aliases ``amd64``/``arm64``); the host's by default.
    :param source: with ``from_file``: the ``source`` to record instead of
        ``{"type": "file", ...}`` (a built kernel records ``{"type": "build", ...}``).
    :returns: the installed record.
    :raises Unsupported: an unknown backend or architecture.
    :raises Permanent: both ``deb`` and ``from_file``, or ``modules_from_deb``
        without ``from_file``.
    :raises NotFound: an input file, apt, dpkg-deb or a decompressor is missing.
    :raises Permanent: corrupt input, a kernel for another architecture, or a
        module/kernel release mismatch.  Nothing installed is changed.
    :raises Transient: the apt download failed.
    :raises Conflict: another install of the same backend/arch is running.
    :raises ResourceExhausted: the disk is full.
    """
    _check_backend(backend)
    arch = _normalise_arch(arch)
    if deb is not None and from_file is not None:
        raise Permanent("give either a kernel package (--deb) or a kernel file (--from), not both",
                             "use --from FILE --modules-from-deb DEB to combine them")  # fmt: skip
    if modules_from_deb is not None and from_file is None:
        raise Permanent("modules from a .deb only combine with a kernel file (--from)",
                             "use --deb DEB to install kernel and modules from one package")  # fmt: skip
    target = kernel_dir(state_root, backend, arch)
    parent = target.parent
    with _install_lock(parent, arch):
        _recover_interrupted_swap(parent, arch)
        import tempfile  # installs only

        work = Path(tempfile.mkdtemp(dir=parent, prefix=f".{arch}.install-"))
        try:
            staging = work / "kernel"
            staging.mkdir()
            record = _stage(state_root, backend, arch, staging, work, deb, from_file, modules_from_deb, source)
            _swap_into_place(staging, target)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ResourceExhausted(f"disk full installing the kernel into {parent}", "free disk space") from exc
            raise Permanent(f"cannot install the kernel into {parent}: {exc}", "check permissions") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return KernelRecord.from_json(record, target)


def _stage(
    state_root: Path,
    backend: str,
    arch: str,
    staging: Path,
    work: Path,
    deb: Path | None,
    from_file: Path | None,
    modules_from_deb: Path | None,
    recorded_source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fill ``staging`` with the kernel files and kernel.json; returns the JSON document."""
    from microagent.kernels import debian  # installs only: not on a boot's path
    source: dict[str, Any]
    if from_file is not None:
        from_file = Path(from_file).absolute()
        fmt = detect_kernel_format(from_file)
        image_format = _place_image(from_file, fmt, backend, arch, staging)
        release = kernel_release(from_file)
        source = recorded_source or {"type": "file", "path": str(from_file), "sha256": sha256_file(from_file)}
        mods: list[dict[str, str]] = []
        if modules_from_deb is not None:
            mdeb = Path(modules_from_deb).absolute()
            pkg = debian.deb_package(mdeb)
            _check_deb_arch(pkg, arch, mdeb)
            unpacked = debian.unpack_kernel_deb(mdeb, work / "unpack", package=pkg)
            mods = _modules_from_unpacked(unpacked, release, staging, backend)
            source["modules_from"] = unpacked.package.as_source()
    else:
        if deb is None:
            pkg = debian.resolve_kernel_package(arch)
            _check_deb_arch(pkg, arch, None)
            deb = debian.download_deb(pkg, debian.deb_cache_dir(state_root))
        deb = Path(deb).absolute()
        pkg = debian.deb_package(deb)
        _check_deb_arch(pkg, arch, deb)
        unpacked = debian.unpack_kernel_deb(deb, work / "unpack", package=pkg)
        fmt = detect_kernel_format(unpacked.vmlinuz)
        image_format = _place_image(unpacked.vmlinuz, fmt, backend, arch, staging)
        release = unpacked.release
        mods = _modules_from_unpacked(unpacked, release, staging, backend)
        source = unpacked.package.as_source()
    files = {
        name: {"path": name, "sha256": sha256_file(staging / name)}
        for name in ("Image", "bzImage")
        if (staging / name).is_file()
    }
    document: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "backend": backend,
        "architecture": arch,
        "version": release,
        "image_format": image_format,
        "source": source,
        "files": files,
        "modules": mods,
        "installed_at": _utc_now(),
    }
    (staging / KERNEL_JSON).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return document


def _check_deb_arch(pkg: debian.DebianPackage, arch: str, deb: Path | None) -> None:
    from microagent.kernels import debian

    want = debian.DEB_ARCH[arch]
    if pkg.architecture and pkg.architecture not in (want, "all"):
        what = str(deb) if deb else pkg.name
        found = ARCH_ALIASES.get(pkg.architecture, pkg.architecture)
        raise Permanent(
            f"debian package {what} is for {pkg.architecture}, not {want} ({arch})",
            f"use a linux-image-*_{want}.deb, or install it for its own architecture with --arch {found}",
        )


def load_kernel(state_root: Path, backend: str, arch: str | None = None) -> KernelRecord:
    """Read the installed kernel record for ``backend``/``arch``.

    :raises Unsupported: an unknown architecture.
    :raises NotFound: no kernel installed there.
    :raises Permanent: kernel.json is malformed.
    """
    directory = kernel_dir(state_root, backend, _normalise_arch(arch))
    path = directory / KERNEL_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotFound(
            f"no kernel is installed for backend {backend} ({directory.name})",
            f"install one: microagent kernel install --backend {backend}",
        ) from exc
    except (OSError, ValueError) as exc:
        raise Permanent(f"{path} is unreadable or not JSON ({exc})", "reinstall the kernel") from exc
    if not isinstance(data, dict):
        raise Permanent(f"{path} is not a JSON object", "reinstall the kernel")
    return KernelRecord.from_json(data, directory)


def list_kernels(state_root: Path) -> list[KernelRecord]:
    """Every installed kernel with a readable kernel.json, sorted by backend/arch.

    Directories whose kernel.json is missing or malformed are left out;
    :func:`kernel_status` reports those as ``missing``/``corrupt``.
    """
    out = []
    for meta in sorted((state_root / "kernels").glob("*/*/" + KERNEL_JSON)):
        directory = meta.parent
        if directory.name.startswith(".") or directory.parent.name.startswith("."):
            continue
        try:
            data = json.loads(meta.read_text())
            if isinstance(data, dict):
                out.append(KernelRecord.from_json(data, directory))
        except (OSError, ValueError, Permanent):
            continue
    return out


def verify_kernel(state_root: Path, backend: str, arch: str | None = None) -> VerifyResult:
    """Recompute the sha256 of every recorded file (Image, bzImage, modules).

    :raises Unsupported: an unknown architecture.
    :raises NotFound: no kernel installed.
    :raises Permanent: kernel.json is malformed.
    """
    record = load_kernel(state_root, backend, arch)
    entries = [(name, f.path, f.sha256) for name, f in record.files.items()]
    entries += [(f"module:{m['name']}", m["path"], m["sha256"]) for m in record.modules]
    checks = []
    for name, rel, expected in entries:
        path = record.directory / rel
        try:
            actual: str | None = sha256_file(path)
        except OSError:
            actual = None
        status = "missing" if actual is None else ("ok" if actual == expected else "mismatch")
        checks.append(FileCheck(name, path, expected, actual, status))
    return VerifyResult(record.backend, record.architecture, record.directory, checks)


def kernel_status(state_root: Path, backend: str, arch: str | None = None, *, verify: bool = True) -> dict[str, Any]:
    """The kernel line of ``doctor``; never raises for a missing or broken kernel.

    :param verify: recompute every sha256 (about 0.2 s for Debian's kernel);
        otherwise only check that the recorded files exist.
    :returns: ``{backend, architecture, path, status, sha256, version, modules,
        detail}`` with ``status`` one of ``installed``, ``missing``, ``corrupt``,
        ``outdated`` (a module this microagent needs is not installed, or a
        built kernel's config fragment is not this microagent's);
        ``path`` is the Image path, ``sha256`` its recorded hash (or ``None``).
    :raises Unsupported: an unknown architecture.
    """
    arch = _normalise_arch(arch)
    directory = kernel_dir(state_root, backend, arch)
    out: dict[str, Any] = {
        "backend": backend,
        "architecture": arch,
        "path": str(directory / "Image"),
        "status": "missing",
        "sha256": None,
        "version": None,
        "modules": 0,
        "detail": f"no kernel installed; run: microagent kernel install --backend {backend}",
    }
    try:
        record = load_kernel(state_root, backend, arch)
    except NotFound:
        if (directory / "Image").exists():
            out.update(status="corrupt", detail=f"{directory / KERNEL_JSON} is missing; reinstall the kernel")
        return out
    except Permanent as exc:
        out.update(status="corrupt", detail=f"{exc.message}; reinstall the kernel")
        return out
    out.update(
        path=str(record.image),
        sha256=record.files["Image"].sha256,
        version=record.version,
        modules=len(record.modules),
        status="installed",
        detail=f"{record.image_format} {record.version}",
    )
    if verify:
        problems = verify_kernel(state_root, backend, arch).problems
    else:
        problems = [FileCheck(rel, record.directory / rel, "", None, "missing")
                    for rel in [f.path for f in record.files.values()] + [m["path"] for m in record.modules]
                    if not (record.directory / rel).is_file()]  # fmt: skip
    if problems:
        names = ", ".join(f"{p.name} {p.status}" for p in problems)
        out.update(status="corrupt", detail=f"{names}; reinstall the kernel")
    elif record.source.get("type") == "build":
        from microagent.kernels.build import stale_fragment  # only for built kernels

        out["detail"] += " (built by microagent kernel build; drivers built in)"
        if stale_fragment(record.source):
            out.update(status="outdated", detail="built from an older config fragment; rebuild it: "
                                                 f"microagent kernel build --backend {backend}")
    elif not record.modules:
        out["detail"] += " (no modules recorded: the virtio drivers must be built into this kernel)"
    elif missing := missing_guest_modules(record):
        # installed before this microagent wanted them (e.g. virtiofs for host folders)
        out.update(status="outdated", detail=f"modules {', '.join(missing)} missing; reinstall the kernel: "
                                             f"microagent kernel install --backend {backend}")
    return out


def missing_guest_modules(record: KernelRecord) -> list[str]:
    """Guest modules this microagent loads that a Debian-package install did not record."""
    if record.source.get("type") != "deb":
        return []
    have = {m["name"] for m in record.modules}
    return [m for m in kmodules.GUEST_MODULES_BY_BACKEND.get(record.backend, ())
            if m not in have and m not in kmodules.OPTIONAL_MODULES]


def _initramfs_key(init_sha: str, modules: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256(f"{INITRAMFS_FORMAT}\ninit {init_sha}\n".encode())
    for name, sha in modules:
        digest.update(f"module {name} {sha}\n".encode())
    return digest.hexdigest()


def ensure_initramfs(kernel_dir: Path, init_binary: Path) -> Path:
    """Build, or reuse, ``<kernel_dir>/initramfs-<hash12>.cpio`` for ``init_binary``.

    The hash covers the initramfs layout version, the init binary and every
    module file (in load order, from kernel.json, or sorted ``modules/*.ko``
    when there is no record), so a changed init or kernel gives a new file.

    :returns: the initramfs path.
    :raises NotFound: the init binary or a module file is missing.
    :raises Permanent: kernel.json is malformed or a file is unreadable.
    :raises ResourceExhausted: the disk is full.
    """
    try:
        init_sha = sha256_file(init_binary)
    except FileNotFoundError as exc:
        raise NotFound(f"guest init binary {init_binary} does not exist", "build it: make guest") from exc
    except OSError as exc:
        raise Permanent(f"cannot read guest init binary {init_binary}: {exc.strerror}", "check permissions") from exc
    meta = kernel_dir / KERNEL_JSON
    if meta.is_file():
        try:
            record = KernelRecord.from_json(json.loads(meta.read_text()), kernel_dir)
        except ValueError as exc:
            raise Permanent(f"{meta} is not JSON ({exc})", "reinstall the kernel") from exc
        module_files = record.module_files
    else:
        module_files = sorted((kernel_dir / "modules").glob("*.ko"))
    hashed = []
    for path in module_files:
        try:
            hashed.append((path.name, sha256_file(path)))
        except FileNotFoundError as exc:
            raise NotFound(f"kernel module {path} is missing", "reinstall the kernel") from exc
    out = kernel_dir / f"initramfs-{_initramfs_key(init_sha, hashed)[:12]}.cpio"
    if out.is_file() and out.stat().st_size > 0:
        return out
    from microagent.kernels.initramfs import build_initramfs  # once per kernel and init

    return build_initramfs(init_binary, module_files, out)
