"""A three-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), each node
with its own host agent and state root; real QEMU guests behind them.

Nodes: the head and ``n1`` advertise ``kvm: 1``, ``n2`` advertises ``kvm: 0``
(all boot under TCG here: the value is what placement reads). Every agent
takes at most three workspaces. Ray is kept small (one CPU, an 80 MB object
store, no dashboard per node). Teardown deletes every workspace through the
library (a removed node's VMs outlive its agent), stops Ray, and asserts that
no VMM or Ray process is left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from microagent.paths import host_arch, kernel_dir, state_root
from support import no_vmm_left

NODE_ARGS: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 80 << 20, "include_dashboard": False,
                             "resources": {"microagent_host": 1}}
KVM = (1, 1, 0)
MAX_WORKSPACES = 3


def import_ray() -> Any:
    try:
        import ray
        import ray.cluster_utils  # noqa: F401
    except ImportError:
        pytest.fail("ray is not installed: run 'make test' (it installs the ray extra), "
                    "or pip install -e '.[ray]'")
    return ray


@dataclass
class RayHarness:
    ray_cluster: Any  # ray.cluster_utils.Cluster
    nodes: list[Any]  # its node handles: head, n1, n2
    roots: list[Path]  # each node's state root
    cluster: Any  # microagent.cluster.Cluster

    def node_id(self, i: int) -> str:
        return str(self.nodes[i].node_id)


def state_root_with_kernel(root: Path) -> Path:
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if (src / "kernel.json").is_file():
        shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    else:
        from microagent.kernels import install_kernel

        install_kernel(root, "qemu")
    return root


def remove_session(session: Path) -> None:
    """Ray's logs and sockets of this cluster under /tmp/ray (Ray leaves them behind)."""
    shutil.rmtree(session, ignore_errors=True)
    latest = session.parent / "session_latest"
    if latest.is_symlink() and Path(os.readlink(latest)) == session:
        latest.unlink()


def raylets() -> list[str]:
    out = subprocess.run(["pgrep", "-fa", "raylet"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHarness]:
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed (run 'make install')")
    ray = import_ray()
    from ray.cluster_utils import Cluster as RayCluster

    from microagent.cluster import Cluster, start_agent
    from microagent.workspace.lifecycle import WorkspaceStore

    assert not ray.is_initialized()
    roots = [state_root_with_kernel(tmp_path_factory.mktemp(f"node{i}")) for i in range(3)]
    rc = RayCluster(initialize_head=True, head_node_args=NODE_ARGS)
    session = Path(rc.head_node.get_session_dir_path())
    try:
        nodes = [rc.head_node, rc.add_node(**NODE_ARGS), rc.add_node(**NODE_ARGS)]
        rc.wait_for_nodes()
        ray.init(address=rc.address, log_to_driver=False, logging_level="ERROR")
        for node, root, kvm in zip(nodes, roots, KVM):
            start_agent(node.node_id, state_dir=root, capabilities={"kvm": kvm}, max_workspaces=MAX_WORKSPACES)
        yield RayHarness(rc, nodes, roots, Cluster(rc.address))
    finally:
        for root in roots:
            store = WorkspaceStore(root)
            for row in store.list():
                store.delete(row["name"], force=True)
        ray.shutdown()
        rc.shutdown()
        remove_session(session)
        deadline = time.monotonic() + 20
        while raylets() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = raylets()
        no_vmm_left(*roots)
        assert left == [], f"Ray processes left running: {left}"
