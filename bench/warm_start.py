"""Benchmark: restore from a snapshot → first exec result, against a cold boot → first exec result.

One tiny builtin:busybox workspace (isolated) in a private state root:

- cold:    ``start`` (a full boot: kernel, guest init, channel HELLO) then ``exec true``;
- restore: ``start --from-snapshot`` of a snapshot taken once the guest was
           ready (device state + memory + disk; clock, entropy and hostname
           fixed up), then ``exec true``;
- fork:    ``create --from-snapshot`` of the same snapshot (disk copy,
           copy-on-write memory), then ``exec true``, and the fork's private memory;
- fan-out: ``--fanout`` forks (default 10) of that snapshot created at once,
           the time until every one answered ``exec true``, and each fork's
           QEMU memory (PSS: shared pages split between the forks, and private);
- run:     ``run builtin:busybox -- true`` end to end (plan, disk, boot or
           restore, exec, kill, delete): ``--cold`` against the warm path
           (the image's boot snapshot, saved by one run beforehand).

Each is run ``--runs`` times through the library (what the CLI calls) and
the medians are compared in the same run: restore/cold is the ratio to watch.
Snapshot create time is printed too.
Usage: python bench/warm_start.py [--runs 5] [--fanout 10]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from microagent.paths import host_arch, kernel_dir, state_root
from microagent.sdk import Workspace
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.oneshot import run


def memory_kib(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines)}


def private_mib(pid: int) -> float:
    fields = memory_kib(pid)
    return (fields["Private_Dirty"] + fields["Private_Clean"]) / 1024


def fan_out(store: WorkspaceStore, source: str, count: int) -> tuple[float, list[float], list[float]]:
    """``count`` forks of ``source`` at once: seconds until all answered, PSS and private MiB each."""
    def fork_and_exec(i: int) -> int:
        t = store.fork(f"fan{i}", source)
        first_exec(store, f"fan{i}")
        return int(t.pid)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        pids = list(pool.map(fork_and_exec, range(count)))
    took = time.perf_counter() - t0
    pss = [memory_kib(pid)["Pss"] / 1024 for pid in pids]
    private = [private_mib(pid) for pid in pids]
    for i in range(count):
        store.delete(f"fan{i}", force=True)
    return took, pss, private


def first_exec(store: WorkspaceStore, name: str) -> None:
    ws = Workspace(name, store=store)
    try:
        result = ws.exec(["true"])
    finally:
        ws.close()
    assert result.exit_code == 0, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fanout", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="warm-bench-"))
    src = kernel_dir(state_root(None), "qemu", host_arch())
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    os.environ["MICROAGENT_STATE_DIR"] = str(root)
    store = WorkspaceStore(root)
    cold, warm, fork, fork_mem, snap, run_cold, run_warm = [], [], [], [], [], [], []

    def timed_run(cold: bool) -> float:
        t0 = time.perf_counter()
        outcome = run("builtin:busybox", ["true"], state_dir=root, cold=cold)
        took = time.perf_counter() - t0
        assert outcome.exit_code == 0 and outcome.warm is not cold, outcome
        return took

    try:
        assert run("builtin:busybox", ["true"], state_dir=root).exit_code == 0  # saves the boot snapshot
        store.create("bench", profile="tiny")
        store.start("bench")
        first_exec(store, "bench")
        t0 = time.perf_counter()
        store.snapshot("bench", "ready")
        snap.append(time.perf_counter() - t0)
        for i in range(args.runs):
            store.kill("bench")
            t0 = time.perf_counter()
            store.start("bench")
            first_exec(store, "bench")
            cold.append(time.perf_counter() - t0)
            store.kill("bench")
            t0 = time.perf_counter()
            store.start("bench", from_snapshot="ready")
            first_exec(store, "bench")
            warm.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            t = store.fork(f"fork{i}", "bench:ready")
            first_exec(store, f"fork{i}")
            fork.append(time.perf_counter() - t0)
            fork_mem.append(private_mib(int(t.pid)))
            store.delete(f"fork{i}", force=True)
            run_cold.append(timed_run(cold=True))
            run_warm.append(timed_run(cold=False))
        fan_s, fan_pss, fan_private = fan_out(store, "bench:ready", args.fanout)
    finally:
        for m in store.list():
            store.delete(m["name"], force=True)
        shutil.rmtree(root, ignore_errors=True)
    c, w, f = statistics.median(cold), statistics.median(warm), statistics.median(fork)
    print(f"runs: {args.runs} (builtin:busybox, tiny profile, QEMU)")
    print(f"snapshot create:                 {snap[0] * 1000:7.0f} ms")
    print(f"cold boot    -> first exec  p50: {c * 1000:7.0f} ms")
    print(f"restore      -> first exec  p50: {w * 1000:7.0f} ms   restore/cold = {w / c:.3f}")
    print(f"fork create  -> first exec  p50: {f * 1000:7.0f} ms   fork/cold    = {f / c:.3f}")
    print(f"fork private memory (QEMU)  p50: {statistics.median(fork_mem):7.1f} MiB")
    print(f"{args.fanout} forks at once -> all answered:  {fan_s * 1000:7.0f} ms   "
          f"fan-out/cold = {fan_s / c:.3f}")
    print(f"per fork (QEMU) p50: PSS {statistics.median(fan_pss):6.1f} MiB, "
          f"private {statistics.median(fan_private):6.1f} MiB (max {max(fan_private):.1f})")
    rc, rw = statistics.median(run_cold), statistics.median(run_warm)
    print(f"run -- true  --cold         p50: {rc * 1000:7.0f} ms")
    print(f"run -- true  warm           p50: {rw * 1000:7.0f} ms   warm/cold    = {rw / rc:.3f}")


if __name__ == "__main__":
    main()
