"""Benchmark: exec round-trip latency against its floor, all in one run.

`true` is executed N times in one tiny workspace (builtin:busybox, isolated),
four ways, each set against the floor measured in the same run:

- floor:   what the guest itself must do: fork+exec+wait of /bin/true, timed
           as a 500-iteration loop in a guest shell (less the empty loop), plus
           one channel round trip (an OPEN answered by an error, no guest work);
- raw:     the channel protocol alone, one connection kept open;
- library: ``microagent.Workspace.exec`` (state checks + a new connection);
- cli:     ``microagent exec NAME -- true`` as a new process each time, set
           against the venv's ``python -c pass`` + the library p50 between them.

Two rounds, each interleaved so that load from elsewhere hits every path
alike.  The first runs echo, raw and library back to back, as the floor's
shell loop runs ``true``: the goal's ratio.  The second runs the library, the
CLI and ``python -c pass``: there the guest idles while each process starts
(about 10-30 ms), and a guest woken from idle answers later under TCG, so
that library row is shown apart (and is the CLI's comparison).

It also prints the resident memory of the channel helper and the VMM.
Usage: python bench/exec_latency.py [--runs 50] [--workspace NAME]
(``--workspace`` reuses a running workspace instead of booting one.)
"""

from __future__ import annotations

import argparse
import compileall
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import microagent
from microagent.channel import ExecRequest, GuestError, open_channel
from microagent.channel import exec as guest_exec
from microagent.channel import files as guest_files
from microagent.paths import state_root
from microagent.runtime_state import locate_runtime_dir
from microagent.workspace.channel_path import guest_channel_path

MICROAGENT = str(Path(sys.executable).parent / "microagent")
LOOP = 500
BEFORE = {"library": 14.0, "cli": 153.0}  # p50 ms when this benchmark was first written


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


def guest_loop_ms(conn, body: str) -> float:  # type: ignore[no-untyped-def]
    script = f"i=0; while [ $i -lt {LOOP} ]; do {body}; i=$((i+1)); done"
    return min(timed(lambda: guest_exec.run(conn, ExecRequest(argv=["/bin/sh", "-c", script])), 3))


def channel_echo(conn) -> None:  # type: ignore[no-untyped-def]
    try:
        guest_files.get_bytes(conn, "/nonexistent-microagent-bench")
    except GuestError:
        pass


def measure(name: str, runs: int) -> None:
    ws = microagent.Workspace.open(name)
    runtime = json.loads((locate_runtime_dir(state_root(None), name) / "runtime.json").read_text())
    paths = {
        "echo": lambda: channel_echo(conn),
        "raw": lambda: guest_exec.run(conn, ExecRequest(argv=["true"])),
        "library": lambda: ws.exec(["true"]),
        "cli": lambda: subprocess.run([MICROAGENT, "exec", name, "--", "true"], check=True),
        "python": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
    }
    rounds = (("echo", "raw", "library"), ("library", "cli", "python"))
    samples: list[dict[str, list[float]]] = [{k: [] for k in keys} for keys in rounds]
    with open_channel(guest_channel_path(state_root(None), name)) as conn:
        per_true = (guest_loop_ms(conn, "/bin/true") - guest_loop_ms(conn, ":")) / LOOP
        for keys, got in zip(rounds, samples):
            for _ in range(runs):  # interleaved, so that load from elsewhere hits every path alike
                for key in keys:
                    got[key] += timed(paths[key], 1)
    (echo, raw, lib), (lib_idle, cli, python) = ([got[k] for k in keys] for keys, got in zip(rounds, samples))
    helper_rss, vmm_rss = rss_mib(runtime["routerPid"]), rss_mib(runtime["pid"])

    floor = per_true + statistics.median(echo)
    cli_floor = statistics.median(python) + statistics.median(lib_idle)
    print(f"exec round trip of `true`, {runs} runs each (ms)")
    print(f"floor: guest fork+exec+wait {per_true:.2f} ({LOOP} in a guest shell loop) "
          f"+ channel echo {statistics.median(echo):.2f} = {floor:.2f}")
    print(f"{'path':<10} {'p50':>8} {'p95':>8} {'ratio':>8}  against")
    rows = (("raw", raw, floor, "floor"), ("library", lib, floor, "floor (goal <= 1.2x)"),
            ("library*", lib_idle, floor, "floor: * between CLI runs, the guest idle meanwhile"),
            ("cli", cli, cli_floor, f"python -c pass {statistics.median(python):.2f} + library* (goal <= 2.0x)"))
    for label, got, base, against in rows:
        p50 = statistics.median(got)
        before = f"  (before: {BEFORE[label]:.0f} ms)" if label in BEFORE else ""
        print(f"{label:<10} {p50:>8.2f} {pct(got, 95):>8.2f} {p50 / base:>7.2f}x  {against}{before}")
    print(f"host-side channel helper RSS: {helper_rss:.1f} MiB; VMM (qemu) RSS: {vmm_rss:.1f} MiB")


def main() -> None:
    # Fresh bytecode, so that no CLI row pays for compiling sources (PYTHONDONTWRITEBYTECODE
    # would otherwise make every run recompile what changed since the last write).
    compileall.compile_dir(Path(microagent.__file__).parent, quiet=1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--workspace", default=None, help="use this running workspace (boot none)")
    args = parser.parse_args()
    if args.workspace:
        measure(args.workspace, args.runs)
        return
    name = f"bench-{uuid.uuid4().hex[:6]}"
    ws = microagent.Workspace.create(name, profile="tiny")
    try:
        measure(name, args.runs)
    finally:
        ws.kill()
        ws.delete()


if __name__ == "__main__":
    main()
