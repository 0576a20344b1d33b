"""Benchmark: 20 tiny workspaces on one machine: starts, concurrent execs and total host memory.

In a private state root (the cached kernel copied in), ``--count`` (default
20) tiny builtin:busybox workspaces (isolated) are:

1. created, then started one after another, each timed from ``start`` to
   its first exec answer.  The first start of the image boots cold and saves
   the image's boot snapshot; every later start restores it (the warm path,
   docs/snapshots.md): both are printed, and which path each start took is
   checked from the start's answer;
2. deleted, created again, and started all at once from a thread pool: the
   time until every one answered its first exec, against the sum of the
   sequential warm starts (the work done one at a time) and against one
   warm start;
3. sent ``--execs`` (default 100) execs at once, spread round-robin across
   all of them (``sh -c 'echo "$i $(hostname)"'`` with ``i`` in the env: each
   must exit 0 with its own number and its workspace's name).  Each exec's
   latency (p50/p90/max) is printed against the floor measured in the same
   run: the p50 of the same exec sent one at a time to one workspace while
   the others idle (after ``--idle`` seconds to settle, over which the idle
   VMMs' CPU use is printed too).  With many execs in flight on few cores
   each waits its turn, so the wall time of all of them against the same
   execs one at a time (round-robin, as spread) is printed as well: the
   throughput ratio;
4. after ``--idle`` seconds, the host PSS of every VMM and channel helper
   (``/proc/PID/smaps_rollup``; a process serving several workspaces counted
   once), in total against the goal (1.3 GiB for 20) and per workspace
   against its goal (64 MiB, VMM + helper).

Any failed start or exec (wrong output included) exits non-zero.  Every
workspace is deleted at the end, also on failure, and the run fails if a
VMM or helper of the state root is still alive afterwards.

Usage: python bench/scale.py [--count 20] [--execs 100] [--idle 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from microagent.paths import host_arch, kernel_dir, state_root
from microagent.runtime_state import locate_runtime_dir, read_json
from microagent.sdk import Workspace
from microagent.workspace.lifecycle import WorkspaceStore

GOAL_TOTAL_MIB = 1.3 * 1024  # for 20 workspaces (issue #15)
GOAL_PER_WS_MIB = 64.0
FLOOR_RUNS = 30
COMMAND = ["sh", "-c", 'echo "$i $(hostname)"']


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key == "Pss":
            return int(value.split()[0]) / 1024
    raise RuntimeError(f"no Pss line for pid {pid}")


def cpu_share(pids: set[int], seconds: float) -> float:
    """CPU the processes used over ``seconds`` of wall time, as a fraction of one core."""
    def ticks() -> int:
        total = 0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total

    before, t0 = ticks(), time.perf_counter()
    time.sleep(seconds)
    return (ticks() - before) / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - t0)


def checked_exec(ws: Workspace, i: int) -> float:
    """One exec of COMMAND with ``i``; its latency in seconds.  Wrong output raises."""
    t0 = time.perf_counter()
    result = ws.exec(COMMAND, env={"i": str(i)}, timeout=120)
    took = time.perf_counter() - t0
    want = f"{i} {ws.name}\n".encode()
    if result.exit_code != 0 or result.stdout != want:
        raise RuntimeError(f"exec {i} in {ws.name}: exit {result.exit_code}, stdout {result.stdout!r}, "
                           f"stderr {result.stderr!r} (wanted {want!r})")
    return took


class Fleet:
    """The benchmark's workspaces: open SDK handles kept for their channel connections."""

    def __init__(self, store: WorkspaceStore, count: int) -> None:
        self.store = store
        self.names = [f"sc{i:02d}" for i in range(count)]
        self.handles: dict[str, Workspace] = {}

    def create_all(self) -> float:
        t0 = time.perf_counter()
        for name in self.names:
            self.store.create(name, profile="tiny")
        return time.perf_counter() - t0

    def start_and_answer(self, name: str) -> tuple[float, bool]:
        """Start ``name`` and wait for its first exec: seconds, and whether it took the warm path."""
        t0 = time.perf_counter()
        transition = self.store.start(name)
        ws = Workspace(name, store=self.store)
        self.handles[name] = ws
        checked_exec(ws, 0)
        return time.perf_counter() - t0, bool((transition.runtime or {}).get("warm"))

    def pids(self) -> tuple[set[int], set[int]]:
        """The VMM and channel-helper pids of every workspace (each pid once)."""
        vmms, helpers = set(), set()
        for name in self.names:
            runtime = read_json(locate_runtime_dir(self.store.root, name) / "runtime.json")
            vmms.add(int(runtime["pid"]))
            if runtime.get("routerPid"):
                helpers.add(int(runtime["routerPid"]))
        return vmms, helpers

    def delete_all(self) -> None:
        """Close every handle and delete every workspace of the store; the first error is raised last."""
        for ws in self.handles.values():
            ws.close()
        self.handles.clear()
        errors = []
        for m in self.store.list():
            try:
                self.store.delete(m["name"], force=True)
            except Exception as exc:  # noqa: BLE001 - delete the rest, then report
                errors.append(exc)
        if errors:
            raise errors[0]


def leftovers(root: Path) -> list[str]:
    """Live VMM or channel-helper processes mentioning the state root."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines()[1:]:
        pid, stat, args = (line.strip().split(None, 2) + ["", ""])[:3]
        if not stat.startswith("Z") and str(root) in args and ("qemu-system" in args or "microagent" in args):
            found.append(f"{pid} {args[:160]}")
    return [line for line in found if int(line.split()[0]) != os.getpid()]


def sequential(fleet: Fleet) -> tuple[float, list[float]]:
    """Start each in turn: the first (cold + boot snapshot save) and the warm ones."""
    first, warm = None, []
    for name in fleet.names:
        took, was_warm = fleet.start_and_answer(name)
        if first is None:
            if was_warm:
                raise RuntimeError(f"{name}: the first start of the image restored a boot snapshot "
                                   "in a fresh state root")
            first = took
        else:
            if not was_warm:
                raise RuntimeError(f"{name}: a later start did not take the warm path")
            warm.append(took)
    assert first is not None
    return first, warm


def concurrent_starts(fleet: Fleet) -> tuple[float, list[float]]:
    """Start every workspace at once: seconds until all answered, and each one's time."""
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(fleet.names)) as pool:
        each = [took for took, _warm in pool.map(fleet.start_and_answer, fleet.names)]
    return time.perf_counter() - t0, each


def concurrent_execs(fleet: Fleet, count: int) -> tuple[float, list[float]]:
    """``count`` execs released together, round-robin over the workspaces: wall time and latencies."""
    handles = [fleet.handles[name] for name in fleet.names]
    gate = threading.Barrier(count)

    def one(i: int) -> float:
        gate.wait(60)
        return checked_exec(handles[i % len(handles)], i)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        latencies = list(pool.map(one, range(count)))
    return time.perf_counter() - t0, latencies


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before reading PSS")
    args = parser.parse_args()
    if args.count < 2 or args.execs < 1:
        parser.error("--count must be at least 2 and --execs at least 1")
    root = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    src = kernel_dir(state_root(None), "qemu", host_arch())
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    os.environ["MICROAGENT_STATE_DIR"] = str(root)
    store = WorkspaceStore(root)
    n = args.count
    fleet = Fleet(store, n)
    failed = False
    try:
        create_s = fleet.create_all()
        first, warm = sequential(fleet)
        fleet.delete_all()
        recreate_s = fleet.create_all()
        all_s, each = concurrent_starts(fleet)
        vmms, _helpers = fleet.pids()
        idle_cpu = cpu_share(vmms, args.idle)  # settled guests, before the floor is measured
        floor = [checked_exec(fleet.handles[fleet.names[0]], 1000 + i) for i in range(FLOOR_RUNS)]
        handles = [fleet.handles[name] for name in fleet.names]
        serial = [checked_exec(handles[i % n], 2000 + i) for i in range(args.execs)]
        exec_wall, latencies = concurrent_execs(fleet, args.execs)
        time.sleep(args.idle)
        vmms, helpers = fleet.pids()
        vmm_mib = sum(pss_mib(pid) for pid in vmms)
        helper_mib = sum(pss_mib(pid) for pid in helpers)
    except BaseException:
        failed = True
        raise
    finally:
        try:
            fleet.delete_all()
        finally:
            left = leftovers(root)
            shutil.rmtree(root, ignore_errors=True)
            if left:
                print("LEFT RUNNING after delete:\n  " + "\n  ".join(left), file=sys.stderr)
                if not failed:
                    raise RuntimeError(f"{len(left)} VMM/helper process(es) survived delete")
    warm_p50 = statistics.median(warm)
    floor_p50 = statistics.median(floor)
    total = vmm_mib + helper_mib
    goal_total = GOAL_TOTAL_MIB * n / 20
    print(f"{n} tiny workspaces (builtin:busybox, isolated, QEMU), {os.cpu_count()} host cores")
    print(f"create x{n} (sequential):                 {create_s:6.1f} s  ({create_s / n * 1000:.0f} ms each;"
          f" again before the concurrent starts {recreate_s:.1f} s)")
    print("sequential start -> first exec answer:")
    print(f"  first (cold boot + boot snapshot save): {first * 1000:6.0f} ms")
    print(f"  warm (restore the boot snapshot)   p50: {warm_p50 * 1000:6.0f} ms   max {max(warm) * 1000:.0f} ms"
          f"   warm/first = {warm_p50 / first:.3f}   sum of {len(warm)}: {sum(warm):.1f} s")
    print(f"{n} concurrent starts -> all answered:    {all_s:6.1f} s   each p50 {statistics.median(each):.1f} s,"
          f" max {max(each):.1f} s")
    print(f"  vs {n} sequential warm starts ({warm_p50 * n:.1f} s): {all_s / (warm_p50 * n):.2f}x;"
          f" vs one warm start: {all_s / warm_p50:.1f}x")
    print(f"idle VMMs, {args.idle:.0f} s after the starts: {idle_cpu * 100:.0f}% of one core together "
          f"({idle_cpu * 100 / n:.1f}% each)")
    print(f"floor: one exec at a time to one workspace p50: {floor_p50 * 1000:6.1f} ms ({FLOOR_RUNS} runs)")
    print(f"{args.execs} concurrent execs across {n} workspaces: all correct in {exec_wall * 1000:.0f} ms")
    for label, q in (("p50", 0.5), ("p90", 0.9)):
        v = pct(latencies, q)
        print(f"  {label}: {v * 1000:7.1f} ms   {v / floor_p50:6.1f}x the floor")
    print(f"  max: {max(latencies) * 1000:7.1f} ms   {max(latencies) / floor_p50:6.1f}x the floor")
    print(f"  the same {args.execs} execs one at a time, round-robin: p50 {statistics.median(serial) * 1000:.1f} ms "
          f"({statistics.median(serial) / floor_p50:.1f}x the floor: a guest idle since its last exec "
          f"wakes slower), {sum(serial):.2f} s in all")
    print(f"  all at once / one at a time (wall): {exec_wall / sum(serial):.2f}x "
          f"({1 / (os.cpu_count() or 1):.2f}x would be every core busy)")
    print(f"host PSS after {args.idle:.0f} s idle: total {total:.0f} MiB (VMMs {vmm_mib:.0f}, "
          f"{len(helpers)} channel helper(s) {helper_mib:.0f})   {total / goal_total:.2f}x the goal "
          f"({goal_total:.0f} MiB for {n})")
    print(f"  per workspace: {total / n:.1f} MiB (VMM {vmm_mib / n:.1f} + helper {helper_mib / n:.1f})   "
          f"{total / n / GOAL_PER_WS_MIB:.2f}x the goal ({GOAL_PER_WS_MIB:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
