"""The pinned pasta: built from Debian's passt source package, sha256-checked.

Why not only the distribution's pasta: Debian 12 ships passt 2023-03-09,
whose pasta resets a TCP connection 24 s after it opened when the host side
has sent nothing on it, so a guest's long one-way upload dies (measured:
``bench/network_throughput.py``). The pinned release (2025-05-03, Debian 13's
``0.0~git20250503.587980c-2+deb13u1``) does not.

``install`` fetches the upstream tarball and Debian's patches from the Debian
mirror apt is configured with (:mod:`.apt_sources`), checks both against the
sha256 in Debian's signed ``Sources`` index (pinned below), applies Debian's
patches, builds ``passt`` with the host's C compiler (about 20 s), and
installs it as ``<venv>/libexec/pasta`` (the program takes pasta's role from
its name).  Idempotent: a build of the pinned version is kept.  Downloads are
cached in ``<state>/cache/sources``.

Lookup is :func:`microagent.network.pasta.pasta_binary`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from microagent.errors import MicroagentError, NotFound, Permanent, Transient, print_error
from microagent.fsutil import atomic_path
from microagent.network.pasta import installed_path

PINNED_VERSION = "2025_05_03.587980c"
DEBIAN_VERSION = "0.0~git20250503.587980c-2+deb13u1"
POOL = "pool/main/p/passt"
#: (file in the pool, sha256 from Debian's Sources index)
SOURCES = (
    ("passt_0.0~git20250503.587980c.orig.tar.xz",
     "69d5eb843f7d648c2cc60bfbca6ea7b5014c6b6f07cdee362c2a8cf490515a49"),
    ("passt_0.0~git20250503.587980c-2+deb13u1.debian.tar.xz",
     "f8d9fdfc1ba89e7dde48705ae68d1dfa8a40477cb85184d41194487f2902b77d"),
)
DOWNLOAD_TIMEOUT_S = 60.0


def _stamp(target: Path) -> Path:
    return target.with_name(target.name + ".version")


def installed_version(prefix: str | None = None) -> str | None:
    """The pinned version installed at ``<prefix>/libexec/pasta``, if any."""
    target = installed_path(prefix)
    try:
        return _stamp(target).read_text().strip() if target.is_file() else None
    except OSError:
        return None


def _fetch(name: str, sha256: str, cache: Path) -> Path:
    """The source file ``name`` from the cache or the mirror, checked against ``sha256``."""
    from microagent.host.apt_sources import ENV_VAR, apt_mirror

    path = cache / name
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
        return path
    mirror = apt_mirror()
    if mirror is None:
        raise NotFound("no Debian mirror is configured in /etc/apt to fetch passt's source from",
                       f"set {ENV_VAR} to a Debian mirror URL")
    url = f"{mirror}/{POOL}/{urllib.parse.quote(name)}"
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            data = resp.read()
    except OSError as exc:
        raise Transient(f"downloading {name} failed: {exc}", "check access to the Debian mirror and retry") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise Permanent(f"{name} has sha256 {actual}, expected the pinned {sha256}",
                        "nothing was built; check the mirror")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _run(argv: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise NotFound(f"{what} needs {argv[0]}, which is not installed", "apt-get install gcc make patch") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise Permanent(f"{what} failed: {tail}")


def build(cache: Path, workdir: Path) -> Path:
    """Unpack, patch and build the pinned passt in ``workdir``; returns the ``passt`` binary."""
    orig, debian = (_fetch(name, sha, cache) for name, sha in SOURCES)
    with tarfile.open(orig) as tar:
        tar.extractall(workdir, filter="data")
    tree = next(p for p in workdir.iterdir() if p.is_dir() and p.name.startswith("passt"))
    with tarfile.open(debian) as tar:
        tar.extractall(tree, filter="data")
    for patch in (tree / "debian" / "patches" / "series").read_text().split():
        _run(["patch", "-p1", "--quiet", "-i", str(tree / "debian" / "patches" / patch)], tree, f"applying {patch}")
    _run(["make", f"-j{os.cpu_count() or 1}", "passt", f"VERSION={PINNED_VERSION}"], tree, "building passt")
    return tree / "passt"


def install_pinned(prefix: str | None = None, cache: Path | None = None) -> Path:
    """Build and install the pinned pasta at ``<prefix>/libexec/pasta`` unless it is there.

    :raises NotFound: no mirror configured, or no compiler.
    :raises Transient: the download failed.
    :raises Permanent: a checksum mismatch or a failed build (nothing installed).
    """
    from microagent.paths import state_root

    target = installed_path(prefix)
    if installed_version(prefix) == PINNED_VERSION:
        return target
    cache = cache or state_root(None) / "cache" / "sources"
    with tempfile.TemporaryDirectory(prefix="microagent-passt-") as tmp:
        binary = build(cache, Path(tmp))
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, mode=0o755) as staged:
            shutil.copyfile(binary, staged)
    _stamp(target).write_text(PINNED_VERSION + "\n")
    return target


def is_pinned(path: str | None) -> bool:
    """Whether ``path`` (a resolved pasta) is this venv's build of the pinned version."""
    return path == str(installed_path()) and installed_version() == PINNED_VERSION


def describe_in_use() -> str:
    """The pasta that would be used, and whether it is the pinned build."""
    from microagent.network.pasta import pasta_binary

    found = pasta_binary()
    if found is None:
        raise NotFound("no pasta found", "run 'python -m microagent.host.pasta_binary install'")
    return f"{found} ({'pinned ' + PINNED_VERSION if is_pinned(found) else 'not the pinned build'})"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m microagent.host.pasta_binary {install,which}``."""
    parser = argparse.ArgumentParser(prog="python -m microagent.host.pasta_binary")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help=f"build and install the pinned pasta {PINNED_VERSION}")
    inst.add_argument("--prefix", default=sys.prefix, help="install into PREFIX/libexec (default: %(default)s)")
    sub.add_parser("which", help="print the pasta that would be used")
    args = parser.parse_args(argv)
    try:
        line = (f"{install_pinned(args.prefix)} (pasta {PINNED_VERSION}, Debian {DEBIAN_VERSION})"
                if args.command == "install" else describe_in_use())
    except MicroagentError as exc:
        print_error(exc)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
