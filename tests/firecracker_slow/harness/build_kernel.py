"""Build (or find) the Firecracker slow-lane TEST kernel; never installed for users.

    python tests/firecracker_slow/harness/build_kernel.py [--print-lane] [--keep-tree]

Debian's ``linux-source-6.12`` package (``apt-get download``, cached and
sha256-checked by :mod:`microagent.kernels.debian` in ``<state>/cache/debs``)
→ ``make tinyconfig`` → ``merge_config.sh`` with ``guest-6.12.fragment`` →
``make olddefconfig`` → ``emulator-workarounds.patch`` → ``make bzImage``
(which links ``vmlinux``, the ELF Firecracker boots).

The result is content-addressed: ``<state>/cache/firecracker-slow-lane/<key>/``
where ``key`` is the sha256 of the source package's sha256, the fragment, the
patch and :data:`RECIPE` (the build's inputs) — so a clean clone on the same
machine (``make test`` in CI) reuses it, and any change to an input builds a
new entry.  A cached entry makes this script a no-op (about 1 s: one
``apt-cache show``).  The build is reproducible (fixed ``KBUILD_BUILD_*``).

Each entry holds ``vmlinux``, ``config``, ``cpu-template.json``, and
``slow-lane.json`` — the file ``MICROAGENT_TEST_FIRECRACKER_SLOW_LANE`` points
at (see README.md).  Prints the ``slow-lane.json`` path with ``--print-lane``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from microagent.errors import MicroagentError, Permanent, print_error
from microagent.fsutil import atomic_write, private_dir, restrict_umask
from microagent.kernels import debian
from microagent.paths import state_root

HARNESS = Path(__file__).resolve().parent
FRAGMENT = HARNESS / "guest-6.12.fragment"
PATCH = HARNESS / "emulator-workarounds.patch"
CPU_TEMPLATE = HARNESS / "cpu-template-nocx16.json"
SOURCE_PACKAGE = "linux-source-6.12"
#: the extra kernel arguments: ``clearcpuid`` hides what the host's instruction emulator cannot
#: execute; ``acpi=off`` because this kernel fails to load Firecracker's DSDT (AE_BAD_PARAMETER in
#: region initialization), after which virtio-mmio IRQs cannot be requested (virtio_blk probe -22);
#: without ACPI it takes Firecracker's MP table and the command-line virtio-mmio devices
BOOT_ARGS = "clearcpuid=xsave,smap,popcnt acpi=off"
#: bump when the build steps change (part of the cache key)
RECIPE = "tinyconfig+fragment+olddefconfig+patch+bzImage/v1"
#: fixed build identity: the same inputs give the same vmlinux
REPRODUCIBLE_ENV = {"KBUILD_BUILD_TIMESTAMP": "2026-01-01 00:00:00 UTC", "KBUILD_BUILD_USER": "microagent",
                    "KBUILD_BUILD_HOST": "slow-lane", "KBUILD_BUILD_VERSION": "1", "LC_ALL": "C"}
#: options the fragment must have produced (merge_config only warns)
REQUIRED = ("CONFIG_VIRTIO_MMIO=y", "CONFIG_VIRTIO_BLK=y", "CONFIG_VIRTIO_NET=y", "CONFIG_VIRTIO_VSOCKETS=y",
            "CONFIG_EXT4_FS=y", "CONFIG_SERIAL_8250_CONSOLE=y", "CONFIG_BLK_DEV_INITRD=y", "CONFIG_PVH=y",
            "CONFIG_UNIX98_PTYS=y", "CONFIG_DEVTMPFS=y")


def cache_root() -> Path:
    return state_root(None) / "cache" / "firecracker-slow-lane"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(source_sha256: str) -> str:
    parts = {"source": source_sha256, "fragment": _sha(FRAGMENT), "patch": _sha(PATCH), "recipe": RECIPE}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def source_package() -> debian.DebianPackage:
    return debian._package_from_fields(debian._apt_show(SOURCE_PACKAGE)[0])


def _run(argv: list[str], cwd: Path, log: Path, what: str) -> None:
    env = {**os.environ, **REPRODUCIBLE_ENV}
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise Permanent(f"{what} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail),
                        "see the build log; build tools: scripts/host-deps.sh (gcc make flex bison bc libelf-dev)")


def _unpack_source(deb: Path, work: Path, log: Path) -> Path:
    """``dpkg-deb -x`` the package, then untar its ``linux-source-6.12.tar.xz``."""
    _run(["dpkg-deb", "-x", str(deb), str(work / "pkg")], work, log, "unpacking the source package")
    tarballs = sorted((work / "pkg" / "usr" / "src").glob("linux-source-*.tar.*"))
    if len(tarballs) != 1:
        raise Permanent(f"{deb.name} holds {len(tarballs)} source tarballs, expected 1")
    _run(["tar", "-xf", str(tarballs[0]), "-C", str(work)], work, log, "untarring the kernel source")
    shutil.rmtree(work / "pkg")
    return work / tarballs[0].name.split(".tar.")[0]


def build(entry: Path, deb: Path, pkg: debian.DebianPackage, *, keep_tree: bool) -> None:
    private_dir(cache_root())
    work = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".build-"))
    log = work / "build.log"
    started = time.monotonic()
    jobs = str(os.cpu_count() or 1)
    try:
        tree = _unpack_source(deb, work, log)
        _run(["make", "tinyconfig"], tree, log, "make tinyconfig")
        _run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)], tree, log, "merge_config.sh")
        _run(["make", "olddefconfig"], tree, log, "make olddefconfig")
        config = (tree / ".config").read_text()
        missing = [opt for opt in REQUIRED if opt not in config.splitlines()]
        if missing:
            raise Permanent(f"the kernel config lacks {', '.join(missing)} after merging the fragment",
                            f"fix {FRAGMENT.name} (a dependency may be off)")
        _run(["patch", "-p1", "--forward", "-i", str(PATCH)], tree, log, f"applying {PATCH.name}")
        _run(["make", f"-j{jobs}", "bzImage"], tree, log, "make bzImage")
        staged = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".entry-"))
        shutil.copyfile(tree / "vmlinux", staged / "vmlinux")
        shutil.copyfile(tree / ".config", staged / "config")
        info = {"source": pkg.as_source(), "fragmentSha256": _sha(FRAGMENT), "patchSha256": _sha(PATCH),
                "recipe": RECIPE, "vmlinuxSha256": _sha(staged / "vmlinux"),
                "buildSeconds": round(time.monotonic() - started)}
        atomic_write(staged / "build.json", (json.dumps(info, indent=2) + "\n").encode())
        shutil.copyfile(log, staged / "build.log")
        os.replace(staged, entry)  # the entry appears complete or not at all
    finally:
        if keep_tree:
            print(f"build tree kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def write_lane(entry: Path) -> Path:
    """(Re)write the entry's ``cpu-template.json`` and ``slow-lane.json`` from the harness.

    They are not part of the key (no rebuild when only they change), so they
    are refreshed whenever they differ from the harness's.
    """
    template = entry / "cpu-template.json"
    if not template.is_file() or template.read_bytes() != CPU_TEMPLATE.read_bytes():
        atomic_write(template, CPU_TEMPLATE.read_bytes())
    lane = entry / "slow-lane.json"
    doc = (json.dumps({"kernel": str(entry / "vmlinux"), "cpuTemplate": str(template), "bootArgs": BOOT_ARGS},
                      indent=2) + "\n").encode()
    if not lane.is_file() or lane.read_bytes() != doc:
        atomic_write(lane, doc)
    return lane


def cached_lane() -> Path | None:
    """The cached entry's ``slow-lane.json`` for today's inputs, or ``None`` when the kernel is not built."""
    entry = cache_root() / cache_key(source_package().sha256 or "")
    return write_lane(entry) if (entry / "vmlinux").is_file() else None


def ensure(*, keep_tree: bool = False) -> Path:
    """The cached entry's ``slow-lane.json``, building the kernel first if needed."""
    pkg = source_package()
    entry = cache_root() / cache_key(pkg.sha256 or "")
    if not (entry / "vmlinux").is_file():
        deb = debian.download_deb(pkg, debian.deb_cache_dir(state_root(None)))
        print(f"building the Firecracker slow-lane test kernel from {pkg.spec} into {entry} "
              "(6-11 minutes on 2 cores; cached afterwards)", file=sys.stderr)
        build(entry, deb, pkg, keep_tree=keep_tree)
    return write_lane(entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-lane", action="store_true", help="print the slow-lane.json path")
    parser.add_argument("--keep-tree", action="store_true", help="keep the build tree (debugging)")
    args = parser.parse_args(argv)
    restrict_umask()  # cache files 0600, directories 0700
    try:
        lane = ensure(keep_tree=args.keep_tree)
    except MicroagentError as exc:
        print_error(exc)
        return 1
    if args.print_lane:
        print(lane)
    return 0


if __name__ == "__main__":
    sys.exit(main())
