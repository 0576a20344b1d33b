"""Benchmark: start-up cost of the ``microagent`` command against the bare interpreter.

Each command runs N times as a new process, alternating so that machine load
hits every row alike; the p50 is set against its floor from the same run:

- ``python -c pass``           the venv's interpreter alone (the floor);
- ``microagent --help``        floor: ``python -c pass`` (goal <= 2.0x);
- ``microagent exec NAME -- true``  floor: ``python -c pass`` + the library's
  ``Workspace.exec`` p50 (goal <= 2.0x); only with ``--workspace NAME``
  (a running workspace; this script boots none).

Usage: python bench/cli_startup.py [--runs 40] [--workspace NAME]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import time
from pathlib import Path

import microagent

MICROAGENT = str(Path(sys.executable).parent / "microagent")
BEFORE = {"--help": 98.0, "exec": 153.0}  # p50 ms when this benchmark was first written


def run_ms(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    # Fresh bytecode, so that no CLI row pays for compiling sources (PYTHONDONTWRITEBYTECODE
    # would otherwise make every run recompile what changed since the last write).
    compileall.compile_dir(Path(microagent.__file__).parent, quiet=1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--workspace", default=None, help="a running workspace for the exec row")
    args = parser.parse_args()
    rows = {"python": [sys.executable, "-c", "pass"], "--help": [MICROAGENT, "--help"]}
    if args.workspace:
        rows["exec"] = [MICROAGENT, "exec", args.workspace, "--", "true"]
    samples: dict[str, list[float]] = {k: [] for k in rows}
    library: list[float] = []
    ws = None
    if args.workspace:
        ws = microagent.Workspace.open(args.workspace)
    for _ in range(args.runs):
        for key, argv in rows.items():
            samples[key].append(run_ms(argv))
        if ws is not None:
            t0 = time.perf_counter()
            ws.exec(["true"])
            library.append((time.perf_counter() - t0) * 1000)
    p50 = {k: statistics.median(v) for k, v in samples.items()}
    print(f"CLI start-up, {args.runs} runs each, p50 (ms)")
    print(f"{'command':<34} {'p50':>8} {'ratio':>7}  against")
    print(f"{'python -c pass':<34} {p50['python']:>8.2f} {1:>6.2f}x  itself")
    print(f"{'microagent --help':<34} {p50['--help']:>8.2f} {p50['--help'] / p50['python']:>6.2f}x  "
          f"python -c pass (goal <= 2.0x; before: {BEFORE['--help']:.0f} ms)")
    if ws is not None:
        floor = p50["python"] + statistics.median(library)
        print(f"{'microagent exec NAME -- true':<34} {p50['exec']:>8.2f} {p50['exec'] / floor:>6.2f}x  "
              f"python -c pass + library exec {statistics.median(library):.2f} "
              f"(goal <= 2.0x; before: {BEFORE['exec']:.0f} ms)")


if __name__ == "__main__":
    main()
