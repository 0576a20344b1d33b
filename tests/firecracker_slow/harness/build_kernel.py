"""Build (or find) the Firecracker slow-lane TEST kernel; never installed for users.

    python tests/firecracker_slow/harness/build_kernel.py [--print-lane] [--keep-tree]

The build is the product's (:mod:`microagent.kernels.build`, which also builds
``microagent kernel build``'s kernel) with this harness's fragment and patch:
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
import json
import sys
from pathlib import Path

from microagent.errors import MicroagentError, print_error
from microagent.fsutil import atomic_write, restrict_umask
from microagent.kernels import build as kbuild
from microagent.kernels import debian
from microagent.paths import state_root

HARNESS = Path(__file__).resolve().parent
FRAGMENT = HARNESS / "guest-6.12.fragment"
PATCH = HARNESS / "emulator-workarounds.patch"
CPU_TEMPLATE = HARNESS / "cpu-template-nocx16.json"
#: the extra kernel arguments: ``clearcpuid`` hides what the host's instruction emulator cannot
#: execute; ``acpi=off`` because this kernel fails to load Firecracker's DSDT (AE_BAD_PARAMETER in
#: region initialization), after which virtio-mmio IRQs cannot be requested (virtio_blk probe -22);
#: without ACPI it takes Firecracker's MP table and the command-line virtio-mmio devices
BOOT_ARGS = "clearcpuid=xsave,smap,popcnt acpi=off"
#: the build: :mod:`microagent.kernels.build`'s steps with this harness's fragment and patch.
#: Every field that is a build input is part of the cache key; do not change them casually
#: (a new key is a 6-11 minute rebuild for everyone running the slow lane).
RECIPE = kbuild.Recipe(
    name="firecracker-slow-lane", fragment=FRAGMENT, patch=PATCH, build_host="slow-lane",
    recipe="tinyconfig+fragment+olddefconfig+patch+bzImage/v1", title="Firecracker slow-lane test",
    #: options the fragment must have produced (merge_config only warns)
    required=("CONFIG_VIRTIO_MMIO=y", "CONFIG_VIRTIO_BLK=y", "CONFIG_VIRTIO_NET=y", "CONFIG_VIRTIO_VSOCKETS=y",
              "CONFIG_EXT4_FS=y", "CONFIG_SERIAL_8250_CONSOLE=y", "CONFIG_BLK_DEV_INITRD=y", "CONFIG_PVH=y",
              "CONFIG_UNIX98_PTYS=y", "CONFIG_DEVTMPFS=y"))


def cache_dir() -> Path:
    """``<state>/cache``: the source package in ``debs/``, this kernel in ``firecracker-slow-lane/``."""
    return state_root(None) / "cache"


def cache_root() -> Path:
    return kbuild.build_cache_dir(cache_dir(), RECIPE)


def cache_key(source_sha256: str) -> str:
    return kbuild.cache_key(RECIPE, source_sha256)


def source_package() -> debian.DebianPackage:
    return kbuild.source_package(RECIPE)


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
    built = kbuild.find_built(RECIPE, cache_dir())
    return write_lane(built.directory) if built is not None else None


def ensure(*, keep_tree: bool = False) -> Path:
    """The cached entry's ``slow-lane.json``, building the kernel first if needed."""
    return write_lane(kbuild.ensure_built(RECIPE, cache_dir(), keep_tree=keep_tree).directory)


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
