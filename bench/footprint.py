"""Benchmark: host memory per idle tiny workspace, the VMM and the channel helper apart.

For each count N (default 1 and 5), N tiny builtin:busybox workspaces
(isolated) are created and booted one after another in a private state root,
each answers one ``exec true``, and after a short idle pause the proportional
set size of every VMM (QEMU) and every channel helper is read from
``/proc/PID/smaps_rollup``.  The VMM's cost is its guest RAM plus the
rest of its PSS (QEMU itself, TCG's translation cache).  Its guest RAM is
its own RAM file on /dev/shm when it has one (a cold boot): every page of
that file, as ``st_blocks`` counts them, because a tmpfs page costs host
memory whether or not QEMU has touched it lately, and ``Pss_Shmem``
(printed as "mapped") counts only those it has.  A VMM without a RAM file of
its own (every restore: a warm start, a fork) maps a snapshot's memory
copy-on-write: its PSS counts it (the pages it wrote, and its share of the
snapshot's page cache), under "VMM rest".  Printed per workspace (mean) and as the
marginal cost of the workspaces after the first, against the goals: VMM +
helper <= 64 MiB, helper <= 4 MiB.  Beside them, the floor of the guest's RAM: what
the guest does not have on its free lists (its RAM size minus ``MemFree`` of
its /proc/meminfo: kernel, page cache, slab, processes), i.e. the least host
memory its RAM can take however well freed pages were returned to the host
(docs/architecture.md, "Guest memory the host keeps").

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

from microagent import ramfiles
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


def ram_file_mib(run_dir: Path) -> float | None:
    """Host memory held by the workspace's own RAM file (its tmpfs pages), or ``None`` without one."""
    path = ramfiles.find(run_dir)
    return path.stat().st_blocks * 512 / 2**20 if path is not None else None


def guest_in_use_mib(ws: Workspace, ram_mib: int) -> float:
    """The guest's RAM minus what its kernel has free (``MemFree``), in MiB: the floor."""
    result = ws.exec(["cat", "/proc/meminfo"])
    assert result.exit_code == 0, result
    fields = dict(line.split(":", 1) for line in result.stdout.decode().splitlines() if ":" in line)
    return ram_mib - int(fields["MemFree"].split()[0]) / 1024


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
        run_dir = locate_runtime_dir(store.root, name)
        runtime = read_json(run_dir / "runtime.json")
        vmm, helper = pss_mib(int(runtime["pid"])), pss_mib(int(runtime["routerPid"]))
        mapped = vmm.get("Pss_Shmem", 0.0)
        own_file = ram_file_mib(run_dir)
        ws = Workspace(name, store=store)
        try:  # read after the PSS, so this exec's own pages do not count
            floor = guest_in_use_mib(ws, store.manifest(name).memoryMiB)
        finally:
            ws.close()
        rows.append({"rest": vmm["Pss"] - mapped, "mapped": mapped,
                     "guest_ram": mapped if own_file is None else own_file,
                     "helper": helper["Pss"], "floor": floor})
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
    print("host memory per idle tiny workspace (builtin:busybox, QEMU), MiB")
    print(f"{'N':>3} {'guest RAM':>10} {'(mapped)':>9} {'VMM rest':>9} {'helper':>7} {'total':>7}  "
          f"goal: total <= {GOAL_TOTAL_MIB:.0f} (helper <= {GOAL_HELPER_MIB:.0f}); floor: guest in use")
    try:
        for count in args.counts:
            rows = measure(store, count, args.idle)
            mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
            each = mean["guest_ram"] + mean["rest"] + mean["helper"]
            totals[count] = each * count
            print(f"{count:>3} {mean['guest_ram']:>10.1f} {mean['mapped']:>9.1f} {mean['rest']:>9.1f} "
                  f"{mean['helper']:>7.1f} {each:>7.1f}  {each / GOAL_TOTAL_MIB:.2f}x goal; "
                  f"all {totals[count]:.0f}; guest in use {mean['floor']:.1f} "
                  + (f"(guest RAM / floor {mean['guest_ram'] / mean['floor']:.2f}x)" if mean["guest_ram"]
                     else "(guest RAM mapped from the boot snapshot: in VMM rest)"))
        warm = [p.stat().st_blocks * 512 / 2**20 for p in (root / "images" / "warm").rglob("memory")]
        if warm:
            print(f"the image's boot snapshot memory: {sum(warm):.1f} MiB (on the state directory's disk, "
                  "once per image; every warm start maps it copy-on-write)")
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
