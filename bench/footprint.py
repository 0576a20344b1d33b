"""Benchmark: host memory (PSS) per idle tiny workspace, the VMM and the channel helper apart.

For each count N (default 1 and 5), N tiny builtin:busybox workspaces
(isolated) are created and booted one after another in a private state root,
each answers one ``exec true``, and after a short idle pause the proportional
set size of every VMM (QEMU) and every channel helper is read from
``/proc/PID/smaps_rollup``.  The VMM's PSS is split into its guest-RAM file
on /dev/shm (``Pss_Shmem``: the pages the guest touched; the first start of
an image saves its boot snapshot and later starts map that memory
copy-on-write, so workspaces share the pages none of them changed) and the
rest (QEMU itself, TCG's translation cache, and guest pages a workspace
changed after a restore).  Printed per workspace (mean) and as the marginal
cost of the workspaces after the first, against the goals: VMM + helper
<= 64 MiB, helper <= 4 MiB.

Usage: python bench/footprint.py [--counts 1 5] [--idle 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from microagent.paths import host_arch, kernel_dir, state_root
from microagent.runtime_state import locate_runtime_dir, read_json
from microagent.sdk import Workspace
from microagent.workspace.lifecycle import WorkspaceStore

GOAL_TOTAL_MIB = 64.0
GOAL_HELPER_MIB = 4.0
BEFORE = {"vmm": 212.0, "helper": 11.0}  # PSS MiB per idle tiny workspace when this benchmark was written


def pss_mib(pid: int) -> dict[str, float]:
    """``Pss`` and its parts from smaps_rollup, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.startswith("Pss"):
            out[key] = int(value.split()[0]) / 1024
    return out


def measure(store: WorkspaceStore, count: int, idle_s: float) -> list[dict[str, float]]:
    names = [f"fp{i}" for i in range(count)]
    for name in names:
        store.create(name, profile="tiny")
        store.start(name)
        ws = Workspace(name, store=store)
        try:
            assert ws.exec(["true"]).exit_code == 0
        finally:
            ws.close()
    time.sleep(idle_s)
    rows = []
    for name in names:
        runtime = read_json(locate_runtime_dir(store.root, name) / "runtime.json")
        vmm, helper = pss_mib(int(runtime["pid"])), pss_mib(int(runtime["routerPid"]))
        rows.append({"vmm": vmm["Pss"], "guest_ram": vmm.get("Pss_Shmem", 0.0),
                     "helper": helper["Pss"]})
    for name in names:
        store.delete(name, force=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before reading PSS")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="footprint-bench-"))
    src = kernel_dir(state_root(None), "qemu", host_arch())
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    os.environ["MICROAGENT_STATE_DIR"] = str(root)
    store = WorkspaceStore(root)
    totals: dict[int, float] = {}
    print("host PSS per idle tiny workspace (builtin:busybox, QEMU), MiB")
    print(f"{'N':>3} {'VMM':>8} {'RAM file':>10} {'VMM rest':>10} {'helper':>8} {'VMM+helper':>11}  "
          f"goal: <= {GOAL_TOTAL_MIB:.0f} (helper <= {GOAL_HELPER_MIB:.0f})")
    try:
        for count in args.counts:
            rows = measure(store, count, args.idle)
            mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
            totals[count] = sum(r["vmm"] + r["helper"] for r in rows)
            print(f"{count:>3} {mean['vmm']:>8.1f} {mean['guest_ram']:>10.1f} "
                  f"{mean['vmm'] - mean['guest_ram']:>10.1f} {mean['helper']:>8.1f} "
                  f"{mean['vmm'] + mean['helper']:>11.1f}  "
                  f"{(mean['vmm'] + mean['helper']) / GOAL_TOTAL_MIB:.2f}x goal; total {totals[count]:.0f}")
    finally:
        for m in store.list():
            store.delete(m["name"], force=True)
        shutil.rmtree(root, ignore_errors=True)
    counts = sorted(totals)
    if len(counts) > 1:
        lo, hi = counts[0], counts[-1]
        print(f"marginal per workspace ({lo} -> {hi}): {(totals[hi] - totals[lo]) / (hi - lo):.1f} MiB")
    print(f"(before: VMM {BEFORE['vmm']:.0f} + helper {BEFORE['helper']:.0f} MiB)")


if __name__ == "__main__":
    main()
