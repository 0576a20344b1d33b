"""Benchmark: an exec through the Ray cluster vs the same exec through the local library.

A one-node Ray cluster (``ray.cluster_utils``: one CPU, an 80 MB object store,
no dashboard) gets a host agent over a temporary state root; one workspace
(builtin:busybox, tiny) is created through ``microagent.cluster.Cluster``.
Then the same command (`true`) runs N times through the cluster
(``ClusterWorkspace.exec``: one actor call to the agent, which keeps a guest
connection) and N times through the library's GuestConnection on the same
workspace, interleaved, in the same run. The difference is what the cluster
adds per call; the goal is at most 2 ms.

Usage: flock /tmp/microagent-vm.lock python bench/cluster.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster as RayCluster

from microagent.cluster import Cluster, start_agent
from microagent.paths import host_arch, kernel_dir, state_root
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.sessions import GuestConnection

GOAL_MS = 2.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    runs = ap.parse_args().runs
    root = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    shutil.copytree(kernel_dir(state_root(None), "qemu", host_arch()), kernel_dir(root, "qemu", host_arch()),
                    ignore=shutil.ignore_patterns("initramfs-*"))
    rc = RayCluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 << 20, "include_dashboard": False,
        "resources": {"microagent_host": 1}})
    session = Path(rc.head_node.get_session_dir_path())  # Ray's logs: removed at the end
    store = WorkspaceStore(root)
    cluster_s: list[float] = []
    lib_s: list[float] = []
    ping_s: list[float] = []
    try:
        ray.init(address=rc.address, log_to_driver=False, logging_level="ERROR")
        start_agent(rc.head_node.node_id, state_dir=root)
        ws = Cluster(rc.address).create("bench", profile="tiny")
        with GuestConnection(store, "bench") as conn:
            for _ in range(5):  # warm both paths (the agent's connection, Ray's worker)
                ws.exec(["true"])
                conn.exec(["true"])
            handle = ray.get_actor(f"microagent-host-{rc.head_node.node_id}", namespace="microagent")
            for _ in range(runs):
                t = time.perf_counter()
                ray.get(handle.call.remote("ping"))
                ping_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                assert ws.exec(["true"]).exit_code == 0
                cluster_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                assert conn.exec(["true"]).exit_code == 0
                lib_s.append(time.perf_counter() - t)
    finally:
        if store.exists("bench"):
            store.delete("bench", force=True)
        ray.shutdown()
        rc.shutdown()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(session, ignore_errors=True)

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1000

    c_med, l_med = statistics.median(cluster_s) * 1000, statistics.median(lib_s) * 1000
    print(f"exec `true`, {runs} runs each, interleaved (ms):   median     p90")
    print(f"  local library (GuestConnection.exec):   {l_med:7.2f} {q(lib_s, 0.9):7.2f}")
    print(f"  through the cluster (ClusterWorkspace): {c_med:7.2f} {q(cluster_s, 0.9):7.2f}")
    print(f"  of which a bare agent round trip:       {statistics.median(ping_s) * 1000:7.2f} {q(ping_s, 0.9):7.2f}")
    added = c_med - l_med
    print(f"  added by the cluster: +{added:.2f} ms per exec (ratio {c_med / l_med:.2f}x); "
          f"goal <= {GOAL_MS:.0f} ms: {'met' if added <= GOAL_MS else 'MISSED'}")


if __name__ == "__main__":
    main()
