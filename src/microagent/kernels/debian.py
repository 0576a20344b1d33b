"""Debian's cloud kernel package: resolve, download (cached), unpack.

Owns talking to ``apt-cache``/``apt-get``/``dpkg-deb`` to turn the
metapackage ``linux-image-cloud-<debarch>`` into an unpacked tree holding
``boot/vmlinuz-<release>`` and ``lib/modules/<release>/``.  Downloads land in
``<state_root>/cache/debs/`` and are reused when their size and sha256 match
``apt-cache show``.  Choosing files for a backend is
:mod:`microagent.kernels.store`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from microagent.digests import sha256_file
from microagent.errors import NotFound, Permanent, Transient
from microagent.paths import host_arch

__all__ = [
    "DEB_ARCH",
    "METAPACKAGES",
    "DebianPackage",
    "UnpackedKernel",
    "deb_cache_dir",
    "deb_package",
    "download_deb",
    "package_info",
    "resolve_kernel_package",
    "unpack_kernel_deb",
]

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
METAPACKAGES = {"x86_64": "linux-image-cloud-amd64", "aarch64": "linux-image-cloud-arm64"}
_DEP_RE = re.compile(r"^(linux-image-[^\s(|,]+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?")


@dataclass(frozen=True)
class DebianPackage:
    """One binary package version; ``size``/``sha256`` known when apt told us."""

    name: str
    version: str
    architecture: str
    size: int | None = None
    sha256: str | None = None
    filename: str = ""  # pool path from apt-cache show

    @property
    def spec(self) -> str:
        """``name=version``, as apt-get takes it."""
        return f"{self.name}={self.version}"

    def as_source(self) -> dict[str, str]:
        """The ``source`` object recorded in kernel.json."""
        out = {"type": "deb", "package": self.name, "version": self.version, "architecture": self.architecture}
        if self.sha256:
            out["sha256"] = self.sha256
        return out


@dataclass(frozen=True)
class UnpackedKernel:
    """A kernel package unpacked into ``root`` (a temporary directory the caller owns)."""

    root: Path
    release: str  # uname -r
    vmlinuz: Path
    modules_dir: Path
    package: DebianPackage


def deb_cache_dir(state_root: Path) -> Path:
    """``<state_root>/cache/debs``: downloaded .deb files."""
    return state_root / "cache" / "debs"


def _run(argv: list[str], what: str, *, cwd: Path | None = None) -> str:
    exe = shutil.which(argv[0])
    if exe is None:
        raise NotFound(
            f"'{argv[0]}' is not on PATH; {what} needs a Debian-based host",
            "pass a kernel package with --deb FILE, or a kernel with --from FILE",
        )
    try:
        proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, cwd=cwd, check=False)
    except OSError as exc:
        raise Permanent(f"could not run {argv[0]}: {exc.strerror}", f"check the {argv[0]} installation") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("W:")]
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise Transient(f"{what} failed: {detail.lower()}", "check apt sources (apt-get update) and retry")
    return proc.stdout


def _stanzas(text: str) -> list[dict[str, str]]:
    """Parse deb822 text (apt-cache / dpkg-deb output) into field dicts."""
    out: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                out.append(fields)
                fields = {}
            continue
        if line[0].isspace() and key:
            fields[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    if fields:
        out.append(fields)
    return out


def _first_stanza(text: str) -> dict[str, str]:
    stanzas = _stanzas(text)
    return stanzas[0] if stanzas else {}


def _apt_show(*specs: str) -> list[dict[str, str]]:
    what = f"apt-cache show {' '.join(specs)}"
    stanzas = [s for s in _stanzas(_run(["apt-cache", "show", "--no-all-versions", *specs], what)) if "Package" in s]
    if not stanzas:
        raise NotFound(f"debian package {specs[0]} is not known to apt", "run apt-get update, or pass --deb FILE")
    return stanzas


def resolve_kernel_package(arch: str | None = None, metapackage: str | None = None) -> DebianPackage:
    """Resolve the versioned kernel package behind ``linux-image-cloud-<debarch>``.

    One ``apt-cache show`` (about 1.5 s without apt's binary cache) asks for
    the metapackage and every ``linux-image-<release>-<flavour>`` candidate at
    once; the one the metapackage depends on (at its pinned version) wins.

    :param arch: ``x86_64`` or ``aarch64``; the host's by default.
    :param metapackage: override the metapackage name.
    :raises NotFound: no apt on this host, no cloud kernel for ``arch``, or apt
        does not know the package.
    :raises Transient: apt-cache failed.
    :raises Permanent: the metapackage does not depend on a linux-image package.
    """
    arch = arch or host_arch()
    meta = metapackage or METAPACKAGES.get(arch)
    if meta is None:
        raise NotFound(f"no debian cloud kernel is known for architecture {arch}", "pass --deb FILE or --from FILE")
    flavour = meta.removeprefix("linux-image-")
    stanzas = _apt_show(meta, f"^linux-image-[0-9].*-{re.escape(flavour)}$")
    by_name = {s["Package"]: s for s in stanzas}
    if meta not in by_name:
        raise NotFound(f"debian package {meta} is not known to apt", "run apt-get update, or pass --deb FILE")
    for alternative in re.split(r"[,|]", by_name[meta].get("Depends", "")):
        match = _DEP_RE.match(alternative.strip())
        if match:
            name, version = match.group(1), match.group(2)
            found = by_name.get(name)
            if found is None or (version and found.get("Version") != version):
                found = _apt_show(f"{name}={version}" if version else name)[0]
            return _package_from_fields(found)
    raise Permanent(f"debian package {meta} does not depend on a linux-image package", "pass --deb FILE")


def package_info(name: str) -> DebianPackage:
    """What apt offers for ``name`` today (version, size, sha256): one ``apt-cache show``.

    :raises NotFound: no apt, or apt does not know the package.
    :raises Transient: apt-cache failed.
    """
    return _package_from_fields(_apt_show(name)[0])


def _package_from_fields(fields: dict[str, str]) -> DebianPackage:
    size = fields.get("Size")
    return DebianPackage(
        name=fields["Package"],
        version=fields.get("Version", ""),
        architecture=fields.get("Architecture", ""),
        size=int(size) if size and size.isdigit() else None,
        sha256=fields.get("SHA256") or None,
        filename=fields.get("Filename", ""),
    )


def _matches(path: Path, pkg: DebianPackage) -> bool:
    if not path.is_file():
        return False
    if pkg.size is not None and path.stat().st_size != pkg.size:
        return False
    return pkg.sha256 is None or sha256_file(path) == pkg.sha256


def download_deb(pkg: DebianPackage, cache_dir: Path) -> Path:
    """``apt-get download`` ``pkg`` into ``cache_dir``, reusing a matching file.

    A cached file is reused when its size and sha256 match what apt reports.
    The download goes to a temporary directory first, so a failed or
    mismatching download leaves no file in the cache.

    :returns: the path of the cached .deb.
    :raises NotFound: apt-get is missing.
    :raises Transient: the download failed or its checksum does not match apt's.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    base = os.path.basename(pkg.filename) or f"{pkg.name}_{pkg.version.replace(':', '%3a')}_{pkg.architecture}.deb"
    target = cache_dir / base
    if _matches(target, pkg):
        return target
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".download-"))
    try:
        _run(["apt-get", "download", "-q", pkg.spec], f"downloading debian package {pkg.spec}", cwd=tmp)
        debs = sorted(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise Transient(f"apt-get download {pkg.spec} produced no .deb file", "retry")
        if not _matches(debs[0], pkg):
            raise Transient(
                f"downloaded {debs[0].name} does not match apt's size/sha256",
                "run apt-get update and retry; a mirror may be mid-sync",
            )
        os.replace(debs[0], target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def deb_package(deb: Path) -> DebianPackage:
    """Read name, version and architecture from a .deb file's control data.

    :raises NotFound: the file does not exist or dpkg-deb is missing.
    :raises Permanent: the file is not a Debian package.
    """
    if not deb.is_file():
        raise NotFound(f"debian package file {deb} does not exist", "check the path given to --deb")
    try:
        out = _run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"], f"reading {deb}")
    except Transient as exc:
        raise Permanent(f"{deb} is not a debian package", "pass a linux-image-*.deb file") from exc
    fields = _first_stanza(out)
    if "Package" not in fields:
        raise Permanent(f"{deb} is not a debian package", "pass a linux-image-*.deb file")
    return DebianPackage(fields["Package"], fields.get("Version", ""), fields.get("Architecture", ""),
                         deb.stat().st_size, sha256_file(deb))  # fmt: skip


def unpack_kernel_deb(deb: Path, dest: Path, *, package: DebianPackage | None = None) -> UnpackedKernel:
    """``dpkg-deb -x`` a kernel package into ``dest`` and locate its parts.

    :param package: the package's :func:`deb_package` if already read.

    :raises NotFound: the file or dpkg-deb is missing.
    :raises Permanent: not a Debian package, or it holds no kernel
        (``boot/vmlinuz-*`` plus ``lib/modules/<release>/``).
    """
    pkg = package or deb_package(deb)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _run(["dpkg-deb", "-x", str(deb), str(dest)], f"unpacking {deb.name}")
    except Transient as exc:
        raise Permanent(f"cannot unpack {deb}: {exc.message}", "download the package again") from exc
    releases = sorted(p.name for p in (dest / "lib" / "modules").glob("*") if p.is_dir())
    if not releases:
        usr = dest / "usr" / "lib" / "modules"  # merged-/usr packages (trixie and later)
        releases = sorted(p.name for p in usr.glob("*") if p.is_dir())
        modules_root = usr
    else:
        modules_root = dest / "lib" / "modules"
    for release in releases:
        vmlinuz = dest / "boot" / f"vmlinuz-{release}"
        if vmlinuz.is_file():
            return UnpackedKernel(dest, release, vmlinuz, modules_root / release, pkg)
    raise Permanent(
        f"{deb.name} ({pkg.name}) holds no kernel: no boot/vmlinuz-<release> with lib/modules/<release>/",
        "pass a linux-image-*.deb package",
    )
