"""Benchmark: where a cold `run` spends its time, phase by phase, for both kernels.

Each run is `microagent run --cold --json builtin:busybox -- sh -c 'cat /proc/uptime; dmesg'`
in a private state root, timed from the CLI's start to its exit.  The host's
phases come from the run's own `timings`; the guest's from its kernel log
(printk timestamps count from the kernel's start) and its uptime at the command:

- CLI start-up and plan:  the wall time the run's timings do not cover, plus ``prepare``
- disk copy:              ``prepare_disk`` (the workspace's copy of the image's disk)
- before the kernel:      QEMU's start, firmware and kernel decompression: the host's
                          ``boot`` + ``exec`` less the guest's uptime at the command
- kernel init:            kernel start -> ``Run /init as init process``
- initramfs:              ``/init`` -> the root file system mounted (``EXT4-fs (vda): mounted``):
                          the cloud kernel's virtio modules load here
- guest init to ready:    root mounted -> the channel helper has guest init's HELLO
- first exec:             ``exec`` (its binary, and under TCG its code, are cold)
- teardown:               ``shutdown`` + ``cleanup`` (kill, delete)

The phases add up to the wall time (the two guest-clock estimates are within
a few ms).  A kernel that logs without times (the minimal one: no
``CONFIG_PRINTK_TIME``) shows its kernel init and initramfs inside "guest init
to ready".  The minimal kernel of `microagent kernel build` is used when it is
in the cache (`make minimal-kernel`).
Usage: python bench/boot_phases.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from microagent.paths import host_arch, kernel_dir, state_root

MICROAGENT = str(Path(sys.executable).parent / "microagent")
GUEST_CMD = "cat /proc/uptime; dmesg"
_STAMP = r"^\[\s*(\d+\.\d+)\]\s"
PHASES = ("CLI start-up and plan", "disk copy", "before the kernel", "kernel init", "initramfs",
          "guest init to ready", "first exec", "teardown")


def kernel_stamp(dmesg: str, pattern: str) -> float | None:
    """The printk time of the first line matching ``pattern``; ``None`` for a kernel that
    logs without times (the minimal kernel: no ``CONFIG_PRINTK_TIME``).

    :raises SystemExit: a timed log without the line (the boot changed: fix the pattern).
    """
    if re.search(_STAMP, dmesg, re.MULTILINE) is None:
        return None
    match = re.search(_STAMP + pattern, dmesg, re.MULTILINE)
    if match is None:
        raise SystemExit(f"the guest's kernel log has no line matching {pattern!r}")
    return float(match.group(1))


def one_run(env: dict[str, str]) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([MICROAGENT, "run", "--cold", "--json", "builtin:busybox", "--", "sh", "-c", GUEST_CMD],
                          capture_output=True, text=True, env=env, timeout=300)
    wall = time.perf_counter() - t0
    doc = json.loads(proc.stdout)
    if proc.returncode != 0 or not doc.get("ok", True) or doc["result"]["exit_code"] != 0:
        raise SystemExit(f"run failed: {proc.stdout[-800:]} {proc.stderr[-800:]}")
    t, out = doc["timings"], doc["result"]["stdout"]
    uptime = float(out.split()[0])
    to_init = kernel_stamp(out, r"Run /init as init process")
    rooted = kernel_stamp(out, r"EXT4-fs \(vda\): mounted")
    ready = uptime - t["exec"]  # the guest's clock when the helper had its HELLO (about)
    if to_init is None or rooted is None:  # untimed log: the guest's boot as one phase
        to_init, rooted = float("nan"), 0.0
    return {
        "CLI start-up and plan": wall - t["total"] + t["prepare"],
        "disk copy": t["prepare_disk"],
        "before the kernel": t["boot"] + t["exec"] - uptime,
        "kernel init": to_init,
        "initramfs": rooted - to_init,
        "guest init to ready": ready - rooted,
        "first exec": t["exec"],
        "teardown": t["shutdown"] + t["cleanup"],
        "wall": wall,
    }


def private_root(work: Path, minimal: Path | None) -> Path:
    """A state root with the installed cloud kernel, or with ``minimal`` installed."""
    from microagent.fsutil import private_dir

    root = private_dir(work / ("minimal" if minimal else "cloud"))
    if minimal is None:
        shutil.copytree(kernel_dir(state_root(None), "qemu", host_arch()), kernel_dir(root, "qemu", host_arch()),
                        ignore=shutil.ignore_patterns("initramfs-*"))
    else:
        from microagent.kernels import install_kernel

        install_kernel(root, "qemu", from_file=minimal, arch="x86_64")
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from microagent.kernels import build as kbuild

    built = kbuild.find_built(kbuild.MINIMAL, state_root(None) / "cache")
    kernels: list[tuple[str, Path | None]] = [("cloud", None)]
    if built is not None:
        kernels.append(("minimal", built.vmlinux))
    else:
        print("the minimal kernel is not built ('make minimal-kernel'): the cloud kernel only")
    with tempfile.TemporaryDirectory(prefix="boot-phases-") as tmp:
        envs = {name: {**os.environ, "MICROAGENT_STATE_DIR": str(private_root(Path(tmp), vmlinux))}
                for name, vmlinux in kernels}
        for env in envs.values():  # the image's base disk and the initramfs, built once
            subprocess.run([MICROAGENT, "run", "--cold", "builtin:busybox", "--", "true"], env=env,
                           check=True, capture_output=True, timeout=300)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in kernels}
        for _ in range(args.runs):  # interleaved: both kernels see the same host load
            for name, _ in kernels:
                runs[name].append(one_run(envs[name]))
    print(f"cold `run builtin:busybox -- sh -c '{GUEST_CMD}'`, {args.runs} runs each, median ms (share of wall)")
    print(f"{'phase':24}" + "".join(f"{name:>20}" for name, _ in kernels))
    for phase in (*PHASES, "wall"):
        cells = []
        for name, _ in kernels:
            value = statistics.median(r[phase] for r in runs[name])
            wall = statistics.median(r["wall"] for r in runs[name])
            if value != value:  # NaN: this kernel's log has no times
                cells.append("(in the next)")
            else:
                cells.append(f"{value * 1000:9.0f} ({value / wall:5.1%})" if phase != "wall" else f"{value * 1000:9.0f}")
        print(f"{phase:24}" + "".join(f"{c:>20}" for c in cells))
    guest = ("kernel init", "initramfs", "guest init to ready")
    for name, _ in kernels:
        med = {p: statistics.median(r[p] for r in runs[name]) for p in (*PHASES, "wall")}
        ours = med["CLI start-up and plan"] + med["disk copy"] + med["teardown"]
        boot = sum(med[p] for p in guest if med[p] == med[p])
        print(f"{name}: the guest's boot {boot * 1000:.0f} ms, before its kernel "
              f"{med['before the kernel'] * 1000:.0f} ms, microagent's host work {ours * 1000:.0f} ms "
              f"({ours / med['wall']:.1%} of the wall time)")


if __name__ == "__main__":
    main()
