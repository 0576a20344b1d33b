"""Debian's static busybox for a guest architecture other than the host's.

``builtin:busybox`` for an aarch64 guest on an x86_64 host cannot use the
host's ``/bin/busybox``: this module fetches ``busybox-static:<debarch>`` with
``apt-get download`` (the foreign architecture must be enabled:
``dpkg --add-architecture arm64``, as ``scripts/host-deps.sh`` does), keeps
its ``bin/busybox`` under ``<state>/images/builtin/<arch>/busybox``, and reads
the applet names from the binary itself, since a foreign binary cannot be run
to ask (``busybox --list-full``).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from microagent.errors import NotFound, Permanent
from microagent.fsutil import atomic_write

__all__ = ["applet_names", "foreign_busybox"]

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
PACKAGE = "busybox-static"
MEMBER = "./bin/busybox"
MAX_BUSYBOX_BYTES = 16 * 1024 * 1024  # Debian's is under 2 MiB; a bigger member is not busybox
# busybox keeps its applet names as one NUL-separated, sorted table that
# starts with the two test applets "[" and "[[".
APPLET_TABLE_START = b"[\x00[[\x00"
MAX_APPLETS = 1000


def _apt_remediation(debarch: str) -> str:
    return (f"enable the architecture and refresh apt: dpkg --add-architecture {debarch} && apt-get update "
            "(scripts/host-deps.sh does both)")


def _run(argv: list[str], cwd: Path, debarch: str) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which(argv[0])
    if exe is None:
        raise NotFound(f"'{argv[0]}' is not on PATH; a foreign busybox needs a Debian-based host",
                       "run on a Debian-based host, or use an OCI image for the guest architecture")
    proc = subprocess.run([exe, *argv[1:]], cwd=cwd, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines() if not ln.startswith("W:")]
        raise NotFound(f"{' '.join(argv[:3])} failed: {(lines[-1] if lines else 'no output').lower()}",
                       _apt_remediation(debarch))
    return proc


def _busybox_from_deb(deb: Path, work: Path, debarch: str) -> bytes:
    tar_path = work / "data.tar"
    tar_path.write_bytes(_run(["dpkg-deb", "--fsys-tarfile", str(deb)], work, debarch).stdout)
    try:
        with tarfile.open(tar_path) as tf:
            member = tf.getmember(MEMBER)
            if not member.isreg() or member.size > MAX_BUSYBOX_BYTES:
                raise Permanent(f"{deb.name} holds no usable {MEMBER}", "download the package again")
            fh = tf.extractfile(member)
            assert fh is not None  # a regular member always has data
            return fh.read()
    except (tarfile.TarError, KeyError) as exc:
        raise Permanent(f"{deb.name} holds no {MEMBER}: {exc}", "download the package again") from exc


def foreign_busybox(cache_root: Path, arch: str) -> Path:
    """Debian's static busybox for ``arch``, fetched once into ``cache_root/<arch>/busybox``.

    :raises NotFound: no apt/dpkg-deb, or apt does not know the package for
        ``arch`` (the architecture is not enabled).
    :raises Permanent: the package holds no busybox for ``arch``.
    """
    debarch = DEB_ARCH.get(arch)
    if debarch is None:
        raise NotFound(f"no debian busybox is known for architecture {arch}", "use x86_64 or aarch64")
    target = cache_root / arch / "busybox"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", "-q", f"{PACKAGE}:{debarch}"], work, debarch)
        debs = sorted(work.glob("*.deb"))
        if len(debs) != 1:
            raise NotFound(f"apt-get download {PACKAGE}:{debarch} produced no .deb", _apt_remediation(debarch))
        data = _busybox_from_deb(debs[0], work, debarch)
    machine = int.from_bytes(data[18:20], "little") if data.startswith(b"\x7fELF") else None
    if machine != ELF_MACHINE[arch]:
        raise Permanent(f"{PACKAGE}:{debarch} holds a busybox that is not an {arch} ELF", "download it again")
    atomic_write(target, data)
    return target


def applet_names(binary: bytes) -> list[str]:
    """The applet names compiled into a busybox binary, read from its name table.

    :raises Permanent: no applet table (not a busybox binary).
    """
    start = binary.find(APPLET_TABLE_START)
    if start < 0:
        raise Permanent("the busybox binary has no applet table", "use Debian's busybox-static")
    names: list[str] = []
    at = start
    while len(names) < MAX_APPLETS:
        end = binary.find(b"\x00", at)
        if end <= at:  # the double NUL that closes the table
            break
        names.append(binary[at:end].decode("ascii", "replace"))
        at = end + 1
    return names
