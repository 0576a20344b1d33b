"""Benchmark: `microagent run --cold builtin:busybox -- true` vs the bare VMM, with both kernels.

Baseline: the same qemu-system binary, machine flags, kernel and root disk,
booted with a trivial initramfs whose /init powers off at once (busybox
`poweroff -f`).  Both are timed from process start to process exit, in the
same run, on the same host; the ratio is what microagent adds to a cold boot
(guest init, module loading, root mount, channel handshake, exec, supervisor
calls).  A warm `run` (the boot snapshot restored, docs/snapshots.md) is
printed too, for comparison.

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


def baseline_initramfs(path: Path) -> Path:
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
    print(f"{what:<52} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}")


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
        initrd = baseline_initramfs(work / "baseline.cpio")
        disk = work / "rootfs.ext4"
        shutil.copy(busybox_image(root, find_guest_init()).disk, disk)
        # each case: (name, bare qemu argv, environment of `microagent run`)
        cases = [("cloud", cloud, dict(os.environ))]
        if minimal is not None:
            from microagent.fsutil import private_dir
            from microagent.kernels import install_kernel

            mroot = private_dir(work / "minimal-state")
            install_kernel(mroot, "qemu", from_file=minimal, arch="x86_64")  # modules: [] like kernel build
            cases.append(("minimal", minimal, {**os.environ, "MICROAGENT_STATE_DIR": str(mroot)}))
        argvs = {}
        for name, kernel, env in cases:
            cfg = Config(stateDir=str(work), kernelPath=str(kernel), rootfsPath=str(disk),
                         initrdPath=str(initrd), memoryMiB=512, cpuCount=1)
            argvs[name] = qemu_argv(qemu, cfg, hostname="bench", accel=accel)
            subprocess.run(run_true, check=True, capture_output=True, env=env)  # warm: base disk, initramfs
        raw: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        ours: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        warm: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _ in range(args.runs):
            for name, _, env in cases:
                raw[name].append(time_cmd(argvs[name], cwd=tmp))
                for leftover in ("channel.sock", "qmp.sock", "qmp-events.sock", "qemu.pid", "serial.log"):
                    (work / leftover).unlink(missing_ok=True)
                ours[name].append(time_cmd(run_cold, env=env))
                warm[name].append(time_cmd(run_true, env=env))
    print(f"accel={accel} runs={args.runs}")
    print(f"cloud kernel:   {cloud}")
    print(f"minimal kernel: {minimal or 'not built (make minimal-kernel, or pass --minimal-kernel FILE)'}")
    print(f"{'what':<52} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, _, _ in cases:
        row(f"bare qemu, {name} kernel, trivial init (poweroff)", raw[name])
        row(f"microagent run --cold builtin:busybox -- true, {name}", ours[name])
        row(f"microagent run (warm: boot snapshot), {name}", warm[name])
    for name, _, _ in cases:
        m_ours, m_raw = statistics.median(ours[name]), statistics.median(raw[name])
        print(f"ratio microagent run --cold/bare, {name} kernel: {m_ours / m_raw:.2f}x  "
              f"(overhead {m_ours - m_raw:+.3f} s)")
    if "minimal" in ours:
        m_min, m_cloud = statistics.median(ours["minimal"]), statistics.median(ours["cloud"])
        print(f"microagent run --cold, minimal/cloud kernel: {m_min / m_cloud:.2f}x  ({m_min - m_cloud:+.3f} s)")
        bare = statistics.median(raw["cloud"])
        print(f"microagent run --cold with the minimal kernel / bare qemu with the cloud kernel: {m_min / bare:.2f}x")


if __name__ == "__main__":
    main()
