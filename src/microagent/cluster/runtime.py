"""Ray plumbing: connecting, the named actors, and where they run.

Every Ray call of the package is here or in :mod:`.client`; ``ray`` is
imported inside functions so ``import microagent.cluster`` stays cheap and
the CLI pays for Ray only with ``--cluster``.

Actors (namespace ``microagent``, detached: they outlive the caller):

- ``microagent-registry``: the name table (:mod:`.registry`), on the head node.
- ``microagent-host-<node ID>``: one :class:`~microagent.cluster.agent.HostAgent`
  per node, pinned to it (hard node affinity: never moved to another node) and
  holding that node's ``microagent_host`` resource, so there is at most one per
  node. Ray restarts a crashed agent on the same node; a dead node's agent
  cannot be scheduled again, which is what marks its workspaces lost.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from microagent.cluster.agent import HostAgent
from microagent.cluster.registry import Registry
from microagent.errors import InvalidRequest, NotFound, Transient, Unsupported

NAMESPACE = "microagent"
REGISTRY = "microagent-registry"
HOST_RESOURCE = "microagent_host"
HEAD_RESOURCE = "node:__internal_head__"
REGISTRY_KV_KEY = "microagent-registry"
#: threads of an agent: calls to different workspaces (a long exec, a boot) do not wait for each other
AGENT_CONCURRENCY = 32
READY_TIMEOUT_S = 120.0
#: seconds to wait for the head's GCS port to accept a connection
PROBE_TIMEOUT_S = 5.0
INSTALL_HINT = "install the extra: pip install 'microagent[ray]'"


def agent_name(node_id: str) -> str:
    return f"microagent-host-{node_id}"


def import_ray() -> Any:
    """:raises Unsupported: when Ray is not installed."""
    try:
        import ray
    except ImportError:
        raise Unsupported("the Ray cluster support is not installed", INSTALL_HINT) from None
    return ray


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one this host runs); True when this call connected.

    :raises Transient: when there is no cluster to join, naming the address and the remedy.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if not isinstance(address, str) or not address:
        raise InvalidRequest(f"cluster address {address!r} is empty", "pass auto or HOST:PORT of the Ray head")
    _check_reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise _unreachable(address, str(exc).strip().splitlines()[0] if str(exc).strip()
                           else type(exc).__name__) from None
    return True


def _unreachable(address: str, why: str) -> Transient:
    return Transient(f"cannot reach the Ray cluster at {address}: {why}",
                     "start Ray on this host first (ray start --head, or ray start --address HEAD:6379), "
                     "or pass the head's address: --cluster HOST:6379 (docs/cluster.md)", address=address)


def _check_reachable(address: str) -> None:
    """Fail fast where ``ray.init`` would retry for minutes: no cluster known, or its GCS port closed."""
    import socket

    try:  # Ray's own resolution of auto (RAY_ADDRESS, then the last `ray start` of this host)
        from ray._private.services import canonicalize_bootstrap_address

        resolved = canonicalize_bootstrap_address(address)
    except (ImportError, AttributeError):
        return  # another Ray version: let ray.init decide
    except ConnectionError:
        raise _unreachable(address, "no Ray cluster runs on this host (none started, RAY_ADDRESS unset)") from None
    except ValueError as exc:
        raise InvalidRequest(f"cluster address {address!r} is not HOST:PORT ({exc})",
                             "pass auto or HOST:PORT of the Ray head") from None
    if resolved is None:
        raise _unreachable(address, "no Ray cluster runs on this host")
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise _unreachable(address, f"nothing answers at {resolved} ({exc.strerror or exc})") from None


def alive_nodes() -> dict[str, dict[str, Any]]:
    """Node ID -> Ray's node record, for the nodes that are alive."""
    ray = import_ray()
    return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}


def host_nodes() -> dict[str, dict[str, Any]]:
    """The live nodes that advertise ``microagent_host``."""
    return {k: n for k, n in alive_nodes().items() if n.get("Resources", {}).get(HOST_RESOURCE, 0) >= 1}


class RegistryActor(Registry):
    """The registry as a Ray actor, its table kept in Ray's GCS key-value store after every
    change: an actor that Ray restarts (as it did here when a node was removed) starts from
    the table it had, so the names of a departed node still read as ``lost``."""

    def __init__(self) -> None:
        super().__init__()
        import json

        from ray.experimental import internal_kv

        saved = internal_kv._internal_kv_get(REGISTRY_KV_KEY, namespace=NAMESPACE)
        if saved:
            doc = json.loads(saved)
            self.placed, self.nodes = dict(doc["placed"]), dict(doc["nodes"])

    def _save(self) -> None:
        import json

        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(REGISTRY_KV_KEY, json.dumps({"placed": self.placed, "nodes": self.nodes}),
                                     overwrite=True, namespace=NAMESPACE)

    def register_agent(self, node_id: str, info: dict[str, Any], names: list[str]) -> list[str]:
        clashes = super().register_agent(node_id, info, names)
        self._save()
        return clashes

    def reserve(self, name: str, node_id: str) -> str | None:
        owner = super().reserve(name, node_id)
        self._save()
        return owner

    def move(self, name: str, old: str, new: str) -> bool:
        moved = super().move(name, old, new)
        self._save()
        return moved

    def release(self, name: str, node_id: str) -> None:
        super().release(name, node_id)
        self._save()


class AgentActor(HostAgent):
    """The Ray actor form of a host agent: it registers its workspaces when it (re)starts."""

    def __init__(self, node_id: str, **config: Any) -> None:
        from microagent.fsutil import restrict_umask

        restrict_umask()  # the actor's own worker process: its state files and VMM sockets are the user's alone
        super().__init__(node_id, **config)
        ray = import_ray()
        try:
            registry = ray.get_actor(REGISTRY, namespace=NAMESPACE)
            info = {"hostname": self.hostname, "stateDir": str(self.store.root)}
            self.clashes = ray.get(registry.register_agent.remote(node_id, info, sorted(self.adopted)))
        except ValueError:  # no registry yet: the first Cluster() makes it and asks the agents
            self.clashes = []


@functools.cache
def _actor_class(cls: type) -> Any:
    return import_ray().remote(cls)


def registry() -> Any:
    """The registry actor's handle, started on the head node if it is not there."""
    ray = import_ray()
    try:
        return ray.get_actor(REGISTRY, namespace=NAMESPACE)
    except ValueError:
        pass
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next((k for k, n in alive_nodes().items() if HEAD_RESOURCE in n.get("Resources", {})), None)
    options: dict[str, Any] = {"name": REGISTRY, "namespace": NAMESPACE, "lifetime": "detached",
                               "max_restarts": -1, "num_cpus": 0, "get_if_exists": True}
    if head is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)
    return _actor_class(RegistryActor).options(**options).remote()


def agent(node_id: str) -> Any | None:
    """The agent actor of ``node_id``, or ``None``."""
    ray = import_ray()
    try:
        return ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
    except ValueError:
        return None


def start_agent(node_id: str, *, state_dir: str | Path | None = None,
                capabilities: Mapping[str, Any] | None = None, max_workspaces: int | None = None,
                memory_budget_mib: int | None = None) -> Any:
    """The host agent of ``node_id``, started there with this configuration if it is not running.

    An agent already running keeps its configuration (stop it with
    :func:`stop_agent` to change it); its workspaces are re-adopted either way.

    :raises NotFound: when the node is not alive.
    :raises Unsupported: when the node does not advertise ``microagent_host``.
    """
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = alive_nodes().get(node_id)
    if node is None:
        raise NotFound(f"no live Ray node {node_id}", "see the nodes with: microagent cluster status")
    existing = agent(node_id)
    if existing is not None:
        return existing
    if node.get("Resources", {}).get(HOST_RESOURCE, 0) < 1:
        raise Unsupported(f"node {node.get('NodeManagerHostname')} ({node_id[:8]}) does not advertise "
                          f"{HOST_RESOURCE}",
                          "start Ray there with --resources '{\"microagent_host\": 1}' (docs/cluster.md)")
    registry()
    config = {"state_dir": None if state_dir is None else os.fspath(state_dir),
              "capabilities": dict(capabilities or {}), "max_workspaces": max_workspaces,
              "memory_budget_mib": memory_budget_mib}
    handle = _actor_class(AgentActor).options(
        name=agent_name(node_id), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=0, max_concurrency=AGENT_CONCURRENCY, num_cpus=0,
        resources={HOST_RESOURCE: 1},
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(node_id, **config)
    try:
        ray.get(handle.call.remote("ping"), timeout=READY_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - Ray's errors for a constructor that failed or hung
        raise Transient(f"the host agent on {node.get('NodeManagerHostname')} ({node_id[:8]}) did not start: "
                        f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}",
                        "check that microagent is installed on that node and its state directory is "
                        "writable (ray logs on that host say more)", node=node_id) from None
    return handle


def stop_agent(node_id: str) -> bool:
    """Kill the agent of ``node_id`` for good (its VMs keep running); False if there was none."""
    ray = import_ray()
    handle = agent(node_id)
    if handle is None:
        return False
    ray.kill(handle, no_restart=True)
    return True


def ensure_agents() -> dict[str, Any]:
    """Node ID -> agent for every live ``microagent_host`` node, starting missing ones with defaults."""
    return {node_id: start_agent(node_id) for node_id in host_nodes()}
