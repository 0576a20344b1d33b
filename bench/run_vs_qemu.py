"""Benchmark: `microagent run --cold builtin:busybox -- true` vs the bare VMM, with both kernels.

Baseline (the floor): the same qemu-system binary, machine flags, kernel and
root disk, booted with an initramfs whose /init is a static C program that
powers off at once (`reboot(RB_POWER_OFF)`, built here with musl-gcc or cc).
Both are timed from process start to process exit, in the same run, on the
same host; the ratio is what microagent adds to a cold boot (guest init,
module loading, root mount, channel handshake, exec, supervisor calls).
Earlier runs used a busybox script (`poweroff -f`) as the trivial init, which
costs a shell's start; that row is printed too, as are warm `run`s (the boot
snapshot restored, docs/snapshots.md), for comparison.

Two kernels, interleaved in one run: the installed one (Debian's cloud kernel
after `make install`: a bzImage plus virtio modules in the initramfs) and the
minimal one of `microagent kernel build` (a vmlinux with the drivers built in;
`make minimal-kernel` builds it into the cache, where it is found; or pass
`--minimal-kernel FILE`).  The minimal kernel's `run` uses a private state root.

Usage: python bench/run_vs_qemu.py [--runs N] [--minimal-kernel VMLINUX]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from microagent.host.detect import detect, qemu_binary_name
from microagent.images.builtin import busybox_image, find_static_busybox
from microagent.guestinit import find_guest_init
from microagent.kernels.initramfs import CpioEntry, write_cpio
from microagent.paths import host_arch, kernel_dir, state_root
from microagent.supervisors.qemu.argv import qemu_argv
from microagent.vmkit.types import Config

MICROAGENT = str(Path(sys.executable).parent / "microagent")


POWEROFF_C = b"""#include <sys/reboot.h>
int main(void) { reboot(RB_POWER_OFF); return 1; }
"""


def busybox_initramfs(path: Path) -> Path:
    busybox = find_static_busybox().read_bytes()
    entries = [
        CpioEntry.directory("bin"), CpioEntry.directory("dev"), CpioEntry.directory("proc"),
        CpioEntry.char_device("dev/console", 5, 1),
        CpioEntry.file("bin/busybox", busybox, 0o755),
        CpioEntry.file("init", b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n", 0o755),
    ]
    with open(path, "wb") as fh:
        write_cpio(entries, fh)
    return path


def poweroff_initramfs(path: Path) -> Path:
    """The floor's initramfs: /init is a static program that powers the VM off, nothing more."""
    cc = shutil.which("musl-gcc") or shutil.which("cc")
    if cc is None:
        raise SystemExit("no C compiler (musl-gcc or cc) for the baseline's init: run 'make install'")
    src, exe = path.with_suffix(".c"), path.with_suffix(".init")
    src.write_bytes(POWEROFF_C)
    subprocess.run([cc, "-static", "-Os", "-s", "-o", str(exe), str(src)], check=True, capture_output=True)
    entries = [CpioEntry.directory("dev"), CpioEntry.char_device("dev/console", 5, 1),
               CpioEntry.file("init", exe.read_bytes(), 0o755)]
    with open(path, "wb") as fh:
        write_cpio(entries, fh)
    return path


def time_cmd(argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=300, env=env)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def minimal_kernel(arg: str | None) -> Path | None:
    """The built minimal kernel: ``--minimal-kernel`` or today's cache entry (``make minimal-kernel``)."""
    if arg:
        return Path(arg).absolute()
    from microagent.kernels import build as kbuild

    built = kbuild.find_built(kbuild.MINIMAL, state_root(None) / "cache")
    return built.vmlinux if built else None


def row(what: str, times: list[float]) -> None:
    print(f"{what:<58} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--minimal-kernel", help="the vmlinux of `microagent kernel build` (default: the cache's)")
    args = parser.parse_args()
    root = state_root(None)
    cloud = kernel_dir(root, "qemu", host_arch()) / "Image"
    minimal = minimal_kernel(args.minimal_kernel)
    facts = detect()
    accel = "kvm" if facts.kvm.kind == "hardware" else "tcg"
    qemu = shutil.which(qemu_binary_name()) or "qemu-system-x86_64"
    run_true = [MICROAGENT, "run", "builtin:busybox", "--", "true"]  # warm: restores the boot snapshot
    run_cold = [MICROAGENT, "run", "--cold", "builtin:busybox", "--", "true"]
    with tempfile.TemporaryDirectory(prefix="microagent-bench-") as tmp:
        work = Path(tmp)
        initrds = {"floor": poweroff_initramfs(work / "poweroff.cpio"),
                   "busybox": busybox_initramfs(work / "busybox.cpio")}
        disk = work / "rootfs.ext4"
        shutil.copy(busybox_image(root, find_guest_init()).disk, disk)
        # each case: (name, kernel, environment of `microagent run`)
        cases = [("cloud", cloud, dict(os.environ))]
        if minimal is not None:
            from microagent.fsutil import private_dir
            from microagent.kernels import install_kernel

            mroot = private_dir(work / "minimal-state")
            install_kernel(mroot, "qemu", from_file=minimal, arch="x86_64")  # modules: [] like kernel build
            cases.append(("minimal", minimal, {**os.environ, "MICROAGENT_STATE_DIR": str(mroot)}))
        argvs = {}
        for name, kernel, env in cases:
            for init, initrd in initrds.items():
                cfg = Config(stateDir=str(work), kernelPath=str(kernel), rootfsPath=str(disk),
                             initrdPath=str(initrd), memoryMiB=512, cpuCount=1)
                argvs[name, init] = qemu_argv(qemu, cfg, hostname="bench", accel=accel)
            subprocess.run(run_true, check=True, capture_output=True, env=env)  # warm: base disk, initramfs
        times: dict[tuple[str, str], list[float]] = {}
        # every command once per round, in a new order each round: a boot right after another
        # kernel's runs is often slower on this kind of host, and no row should always get that place
        shuffle = random.Random(15)
        for _ in range(args.runs):
            todo = [(name, what, env) for name, _, env in cases for what in (*initrds, "cold", "warm")]
            shuffle.shuffle(todo)
            for name, what, env in todo:
                if what in initrds:
                    times.setdefault((name, what), []).append(time_cmd(argvs[name, what], cwd=tmp))
                    for leftover in ("channel.sock", "qmp.sock", "qmp-events.sock", "qemu.pid", "serial.log"):
                        (work / leftover).unlink(missing_ok=True)
                else:
                    times.setdefault((name, what), []).append(time_cmd(run_cold if what == "cold" else run_true,
                                                                       env=env))
    print(f"accel={accel} runs={args.runs}")
    print(f"cloud kernel:   {cloud}")
    print(f"minimal kernel: {minimal or 'not built (make minimal-kernel, or pass --minimal-kernel FILE)'}")
    print(f"{'what':<58} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, _, _ in cases:
        row(f"bare qemu, {name} kernel, init = poweroff() (the floor)", times[name, "floor"])
        row(f"bare qemu, {name} kernel, init = busybox poweroff -f", times[name, "busybox"])
        row(f"microagent run --cold builtin:busybox -- true, {name}", times[name, "cold"])
        row(f"microagent run (warm: boot snapshot), {name}", times[name, "warm"])
    median = {key: statistics.median(v) for key, v in times.items()}
    for name, _, _ in cases:
        cold, floor, busybox = median[name, "cold"], median[name, "floor"], median[name, "busybox"]
        print(f"ratio microagent run --cold/floor, {name} kernel: {cold / floor:.2f}x  (overhead {cold - floor:+.3f} s; "
              f"against the busybox init of earlier runs {cold / busybox:.2f}x)")
    if "minimal" in {name for name, _, _ in cases}:
        m_min, m_cloud = median["minimal", "cold"], median["cloud", "cold"]
        print(f"microagent run --cold, minimal/cloud kernel: {m_min / m_cloud:.2f}x  ({m_min - m_cloud:+.3f} s)")
        print(f"microagent run --cold with the minimal kernel / the floor with the cloud kernel: "
              f"{m_min / median['cloud', 'floor']:.2f}x")

if __name__ == "__main__":
    main()
