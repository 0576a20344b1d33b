"""Benchmark: an aarch64 guest under TCG vs an x86_64 guest, same host, same run.

Both are `microagent run --json builtin:busybox -- true` (x86_64 is the floor:
the host's own architecture, also TCG here); the script prints the median
boot (supervisor `start` until guest init answers) and total wall time of
each, and the aarch64/x86_64 ratio.  Needs both kernels installed
(`make install`).

Usage: python bench/aarch64_boot.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def one_run(arch: str) -> tuple[float, float]:
    t0 = time.monotonic()
    proc = subprocess.run([MICROAGENT, "run", "--json", "--arch", arch, "--boot-timeout", "240",
                           "builtin:busybox", "--", "true"], capture_output=True, timeout=300)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"{arch} run failed: {proc.stderr.decode()[-500:]}")
    return json.loads(proc.stdout)["timings"]["boot"], wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    one_run("aarch64")  # warm: base disk and initramfs built once, outside the measurement
    one_run("x86_64")
    results: dict[str, list[tuple[float, float]]] = {"x86_64": [], "aarch64": []}
    for _ in range(args.runs):  # interleaved, so host noise hits both alike
        for arch in results:
            results[arch].append(one_run(arch))
    med = {arch: (statistics.median(b for b, _ in r), statistics.median(w for _, w in r))
           for arch, r in results.items()}
    for arch, (boot, wall) in med.items():
        print(f"{arch:8} boot {boot:6.3f} s   run wall {wall:6.3f} s   (median of {args.runs})")
    print(f"ratio aarch64/x86_64: boot {med['aarch64'][0] / med['x86_64'][0]:.2f}x, "
          f"run wall {med['aarch64'][1] / med['x86_64'][1]:.2f}x")


if __name__ == "__main__":
    main()
