"""Benchmark: exec round-trip latency and host-side memory per running workspace.

One workspace (builtin:busybox, isolated) is created and started, then
`true` is executed N times three ways, all in the same run:

- raw:     the channel protocol alone, one connection to the workspace's
           control socket kept open (frames + guest fork/exec);
- library: ``microagent.Workspace.exec`` (state checks + the same channel);
- cli:     ``microagent exec NAME -- true`` as a new process each time.

It also prints the resident memory of the host-side channel helper and of
the VMM process. Usage: python bench/exec_latency.py [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import microagent
from microagent.channel import ExecRequest, open_channel
from microagent.channel import exec as guest_exec
from microagent.paths import state_root

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    name = f"bench-{uuid.uuid4().hex[:6]}"
    ws = microagent.Workspace.create(name, profile="tiny")
    try:
        runtime = json.loads((state_root(None) / name / "runtime.json").read_text())
        control = state_root(None) / name / "control.sock"
        with open_channel(control) as conn:
            raw = timed(lambda: guest_exec.run(conn, ExecRequest(argv=["true"])), args.runs)
        lib = timed(lambda: ws.exec(["true"]), args.runs)
        cli = timed(lambda: subprocess.run([MICROAGENT, "exec", name, "--", "true"], check=True),
                    args.runs)
        helper_rss, vmm_rss = rss_mib(runtime["routerPid"]), rss_mib(runtime["pid"])
    finally:
        ws.kill()
        ws.delete()
    base = statistics.median(raw)
    print(f"exec round trip of `true`, {args.runs} runs each (ms)")
    print(f"{'path':<10} {'p50':>8} {'p95':>8} {'p50 / raw':>10}")
    for label, samples in (("raw", raw), ("library", lib), ("cli", cli)):
        print(f"{label:<10} {statistics.median(samples):>8.2f} {pct(samples, 95):>8.2f} "
              f"{statistics.median(samples) / base:>9.2f}x")
    print(f"host-side channel helper RSS: {helper_rss:.1f} MiB; VMM (qemu) RSS: {vmm_rss:.1f} MiB")


if __name__ == "__main__":
    main()
