"""Benchmark: `microagent run builtin:busybox -- true` vs the bare VMM.

Baseline: the same qemu-system binary, machine flags, kernel and root disk,
booted with a trivial initramfs whose /init powers off at once (busybox
`poweroff -f`).  Both are timed from process start to process exit, in the
same run, on the same host; the ratio is what microagent adds (guest init,
module loading, root mount, channel handshake, exec, supervisor calls).

Usage: python bench/run_vs_qemu.py [--runs N]
"""

from __future__ import annotations

import argparse
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


def time_cmd(argv: list[str], cwd: str | None = None) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=300)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = state_root(None)
    kernel = kernel_dir(root, "qemu", host_arch()) / "Image"
    facts = detect()
    accel = "kvm" if facts.kvm.kind == "hardware" else "tcg"
    qemu = shutil.which(qemu_binary_name()) or "qemu-system-x86_64"
    with tempfile.TemporaryDirectory(prefix="microagent-bench-") as tmp:
        work = Path(tmp)
        initrd = baseline_initramfs(work / "baseline.cpio")
        disk = work / "rootfs.ext4"
        shutil.copy(busybox_image(root, find_guest_init()).disk, disk)
        cfg = Config(stateDir=str(work), kernelPath=str(kernel), rootfsPath=str(disk),
                     initrdPath=str(initrd), memoryMiB=512, cpuCount=1)
        raw_argv = qemu_argv(qemu, cfg, hostname="bench", accel=accel)
        subprocess.run([MICROAGENT, "run", "builtin:busybox", "--", "true"], check=True,
                       capture_output=True)  # warm caches: base disk, initramfs
        ours, raw = [], []
        for _ in range(args.runs):
            raw.append(time_cmd(raw_argv, cwd=tmp))
            for leftover in ("channel.sock", "qmp.sock", "qemu.pid", "serial.log"):
                (work / leftover).unlink(missing_ok=True)
            ours.append(time_cmd([MICROAGENT, "run", "builtin:busybox", "--", "true"]))
    m_ours, m_raw = statistics.median(ours), statistics.median(raw)
    print(f"accel={accel} runs={args.runs} kernel={kernel}")
    print(f"{'what':<44} {'median s':>9} {'min s':>7} {'max s':>7}")
    print(f"{'bare qemu, trivial init (poweroff)':<44} {m_raw:>9.3f} {min(raw):>7.3f} {max(raw):>7.3f}")
    print(f"{'microagent run builtin:busybox -- true':<44} {m_ours:>9.3f} {min(ours):>7.3f} {max(ours):>7.3f}")
    print(f"ratio microagent/bare: {m_ours / m_raw:.2f}x  (overhead {m_ours - m_raw:+.3f} s)")


if __name__ == "__main__":
    main()
