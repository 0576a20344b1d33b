"""``Cluster`` and ``ClusterWorkspace``: workspaces placed over a Ray cluster.

The caller's side. :class:`Cluster` places a workspace (:mod:`.placement` over
the agents' offers), reserves its name in the registry, and has the chosen
node's host agent create it; :class:`ClusterWorkspace` then talks to that
agent directly (one actor call per operation: the registry is not on the
exec path). A workspace whose node has left the cluster is *lost*: every
call raises :class:`WorkspaceLost` naming the node, and nothing recreates
it elsewhere (docs/cluster.md, "Faults").
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any

from microagent.cluster import runtime
from microagent.cluster.placement import Offer, check_require, choose
from microagent.errors import Conflict, MicroagentError, NotFound, ResourceExhausted, Transient
from microagent.workspace.lifecycle import DEFAULT_IMAGE, check_env, check_name
from microagent.workspace.sessions import DEFAULT_OUTPUT_LIMIT

EnvArg = Mapping[str, str] | Sequence[str] | None
#: seconds to wait for the agents' offers before leaving a silent node out of placement
OFFER_TIMEOUT_S = 30.0
#: how long a registry call waits out a restart of the registry actor
REGISTRY_RESTART_S = 30.0


class WorkspaceLost(Conflict):
    """The workspace's node left the cluster: its VM and disk are out of reach."""


def _env_list(env: EnvArg) -> list[str]:
    if env is None:
        return []
    if isinstance(env, Mapping):
        return list(check_env([f"{k}={v}" for k, v in env.items()]))
    return list(check_env(list(env)))


def _argv(argv: Sequence[str] | str) -> list[str]:
    return ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)


def _source_bytes(source: bytes | str | os.PathLike[str] | IO[bytes]) -> tuple[bytes, int | None]:
    """The bytes to send (a local file is read here, on the caller's host) and a local file's mode."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fh:
                return fh.read(), os.fstat(fh.fileno()).st_mode & 0o777
        except FileNotFoundError:
            raise NotFound(f"local file {os.fspath(source)} does not exist") from None
    return source.read(), None


class Cluster:
    """A Ray cluster whose nodes run microagent host agents.

    :param address: ``auto`` (the cluster this host has joined) or the head's ``HOST:PORT``.
    :param start_agents: start a host agent (default configuration) on every
        ``microagent_host`` node that has none.
    :raises Transient: when no cluster answers at ``address``.
    :raises Unsupported: when Ray is not installed (``pip install 'microagent[ray]'``).
    """

    def __init__(self, address: str = "auto", *, start_agents: bool = True) -> None:
        self.address = address
        self._connected = runtime.connect(address)
        self._ray = runtime.import_ray()
        self._registry = runtime.registry()
        self._handles: dict[str, Any] = {}  # node ID -> agent handle: no name lookup per call
        if start_agents:
            runtime.ensure_agents()

    def close(self) -> None:
        """Leave the cluster if this object joined it (workspaces and agents keep running)."""
        if self._connected:
            self._ray.shutdown()
            self._connected = False

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _agents(self) -> dict[str, Any]:
        """Node ID -> agent handle for the live nodes that have one."""
        out = {}
        for node_id in runtime.host_nodes():
            handle = runtime.agent(node_id)
            if handle is not None:
                out[node_id] = handle
        return out

    def _gather(self, agents: dict[str, Any], op: str) -> dict[str, Any]:
        """``op`` on every agent at once; the agents that fail or stay silent are left out."""
        refs = {node_id: h.call.remote(op) for node_id, h in agents.items()}
        ready, _ = self._ray.wait(list(refs.values()), num_returns=len(refs), timeout=OFFER_TIMEOUT_S)
        done = set(ready)
        out = {}
        for node_id, ref in refs.items():
            if ref not in done:
                continue
            try:
                status, value = self._ray.get(ref)
            except self._ray.exceptions.RayError:
                continue
            if status == "ok":
                out[node_id] = value
        return out

    def call(self, node_id: str, name: str, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``op`` on the agent of ``node_id`` for workspace ``name``; re-raise its error.

        :raises WorkspaceLost: when the node has left the cluster.
        :raises Transient: when the node is there but its agent is not (restarting, stopped).
        """
        handle = self._handles.get(node_id) or runtime.agent(node_id)
        if handle is None:
            raise self._unreachable(node_id, name, "no host agent")
        try:
            status, value = self._ray.get(handle.call.remote(op, *args, **kwargs))
        except self._ray.exceptions.RayError as exc:
            self._handles.pop(node_id, None)
            raise self._unreachable(node_id, name, str(exc).strip().splitlines()[0] if str(exc) else "") from None
        self._handles[node_id] = handle
        if status == "err":
            raise value
        return value

    def _ask_registry(self, method: str, *args: Any) -> Any:
        """``method`` on the registry actor, waiting out a restart of it (Ray answers
        ``ActorUnavailableError`` meanwhile) for up to :data:`REGISTRY_RESTART_S`."""
        import time

        deadline = time.monotonic() + REGISTRY_RESTART_S
        while True:
            try:
                return self._ray.get(getattr(self._registry, method).remote(*args))
            except self._ray.exceptions.ActorUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _node_label(self, node_id: str) -> str:
        host = self._ask_registry("table")[1].get(node_id, {}).get("hostname", "?")
        return f"{host} ({node_id})"

    def _unreachable(self, node_id: str, name: str, why: str) -> MicroagentError:
        label = self._node_label(node_id)
        if node_id not in runtime.alive_nodes():
            return WorkspaceLost(
                f"workspace {name} is lost: its node {label} has left the cluster",
                f"it is not recreated elsewhere; bring the node back (its VM and disk stayed there), "
                f"or forget it with: microagent delete --cluster {self.address} {name}",
                node=node_id, state="lost")
        return Transient(f"the host agent of node {label} does not answer for workspace {name}: {why}",
                         "retry in a few seconds (Ray restarts a crashed agent), or start it on that host "
                         "with: microagent cluster agent", node=node_id)

    def _locate(self, name: str) -> str:
        """The node that holds ``name``; asks the agents when the registry does not know it."""
        check_name(name)
        node_id = self._ask_registry("lookup", name)
        if node_id is not None:
            return str(node_id)
        for node_id, rows in self._gather(self._agents(), "list").items():
            if any(r["name"] == name for r in rows):
                self._ask_registry("reserve", name, node_id)
                return node_id
        raise NotFound(f"no workspace {name} in the cluster", "see them with: microagent list --cluster ADDRESS")

    # ------------------------------------------------------------ nodes

    def offers(self) -> list[Offer]:
        """What each live agent can take now."""
        return list(self._gather(self._agents(), "offer").values())

    def status(self) -> dict[str, Any]:
        """``{nodes: [...], workspaces: [...]}``: every node (alive or not, with or without an agent)."""
        placed, known = self._ask_registry("table")
        alive = runtime.alive_nodes()
        offers = {o.node_id: o for o in self.offers()}
        counts: dict[str, int] = {}
        for node_id in placed.values():
            counts[node_id] = counts.get(node_id, 0) + 1
        nodes = []
        for node_id in sorted(set(alive) | set(known)):
            rec = alive.get(node_id, {})
            offer = offers.get(node_id)
            nodes.append({"nodeId": node_id, "hostname": rec.get("NodeManagerHostname")
                          or known.get(node_id, {}).get("hostname"), "alive": node_id in alive,
                          "host": rec.get("Resources", {}).get(runtime.HOST_RESOURCE, 0) >= 1,
                          "agent": offer is not None, "workspaces": counts.get(node_id, 0),
                          "offer": offer.to_json() if offer else None})
        return {"address": self.address, "nodes": nodes, "workspaces": self.list()}

    # ------------------------------------------------------------ workspaces

    def create(self, name: str, image: str = DEFAULT_IMAGE, *, profile: str | None = None,
               memory_mib: int | None = None, cpus: int | None = None, disk_size_mib: int | None = None,
               env: EnvArg = None, network: str = "isolated", require: Mapping[str, Any] | None = None,
               strategy: str = "spread", start: bool = True, boot_timeout: float = 60.0) -> "ClusterWorkspace":
        """Place workspace ``name`` on a node that has ``require`` and room, create it there, boot it.

        :param require: capabilities the node must have: numbers are minimums
            (``{"kvm": 1}``), strings exact (``{"backend": "qemu"}``).
        :param strategy: ``spread`` (default: the node with the fewest workspaces) or ``pack``.
        :raises Conflict: when the name is taken anywhere in the cluster.
        :raises Unsupported: when no node has the required capabilities.
        :raises ResourceExhausted: when every node that has them is full.
        """
        from microagent.workspace.profiles import check_overrides, get_profile

        check_name(name)
        require = check_require(require)
        check_overrides(memory_mib, cpus, disk_size_mib)
        need = memory_mib or get_profile(profile).memory_mib
        env_list = _env_list(env)
        candidates = choose(self.offers(), memory_mib=need, require=require, strategy=strategy)
        first = candidates[0].node_id
        holder = self._ask_registry("reserve", name, first)
        if holder is not None:
            raise Conflict(f"workspace {name} exists already in the cluster, on node {self._node_label(holder)}",
                           "pick another name, or delete that one first")
        node_id, last_full = first, None
        try:
            for offer in candidates:
                if offer.node_id != node_id:
                    self._ask_registry("move", name, node_id, offer.node_id)
                    node_id = offer.node_id
                try:
                    self.call(node_id, name, "create", name, image=image, profile=profile, memory_mib=memory_mib,
                              cpus=cpus, disk_size_mib=disk_size_mib, env=env_list, network=network, start=start,
                              boot_timeout=boot_timeout)
                except ResourceExhausted as exc:  # filled up since its offer: try the next node
                    last_full = exc
                    continue
                return ClusterWorkspace(self, name, node_id, offer.hostname, created=True)
        except BaseException:
            if not self._exists_on(node_id, name):
                self._ask_registry("release", name, node_id)
            raise
        assert last_full is not None
        self._ask_registry("release", name, node_id)
        raise last_full

    def _exists_on(self, node_id: str, name: str) -> bool:
        try:
            self.call(node_id, name, "state", name)
            return True
        except MicroagentError:
            return False

    def open(self, name: str) -> "ClusterWorkspace":
        """The workspace ``name`` wherever it runs.

        :raises NotFound: when no node has it. :raises WorkspaceLost: when its node has left.
        """
        node_id = self._locate(name)
        ws = ClusterWorkspace(self, name, node_id, "")
        ws.hostname = str(ws.info()["hostname"])
        return ws

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every workspace of the cluster with its node, hostname and state (``lost`` for a departed node)."""
        placed, known = self._ask_registry("table")
        rows: builtins.list[dict[str, Any]] = []
        seen = set()
        answered = self._gather(self._agents(), "list")
        for node_rows in answered.values():
            for row in node_rows:
                rows.append(row)
                seen.add(row["name"])
        alive = runtime.alive_nodes()
        for name, node_id in placed.items():
            if name in seen:
                continue
            if node_id not in alive:
                state = "lost"
            elif node_id in answered:
                continue  # reserved, its create still running
            else:
                state = "unknown"  # the node is there, its agent is not answering
            rows.append({"name": name, "state": state, "node": node_id,
                         "hostname": known.get(node_id, {}).get("hostname"), "pid": None})
        return sorted(rows, key=lambda r: r["name"])

    def delete(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Delete ``name`` on its node; a lost one is only forgotten (its node is gone).

        :raises Conflict: while its VM runs and ``force`` is false.
        """
        node_id = self._locate(name)
        try:
            out = self.call(node_id, name, "delete", name, force=force)
        except WorkspaceLost:
            self._ask_registry("release", name, node_id)
            return {"name": name, "deleted": True, "killed": False, "lost": True, "node": node_id}
        self._ask_registry("release", name, node_id)
        return {**out, "node": node_id}


class ClusterWorkspace:
    """A workspace on one node of a :class:`Cluster`: the methods of :class:`microagent.Workspace`.

    Calls go to the node's host agent. Output is collected (no streaming
    sinks), and ``put``/``read_file`` carry the whole file through Ray.
    Leaving a ``with`` block deletes a workspace this handle created.
    """

    def __init__(self, cluster: Cluster, name: str, node: str, hostname: str, *, created: bool = False) -> None:
        self.cluster = cluster
        self.name = name
        self.node = node
        self.hostname = hostname
        self._created = created

    def __repr__(self) -> str:
        return f"ClusterWorkspace({self.name!r}, node={self.node!r}, hostname={self.hostname!r})"

    def __enter__(self) -> "ClusterWorkspace":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._created:
            self.cluster.delete(self.name, force=True)

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return self.cluster.call(self.node, self.name, op, self.name, *args, **kwargs)

    # ------------------------------------------------------------ state

    def info(self) -> dict[str, Any]:
        """``{name, state, node, hostname, pid}``."""
        result: dict[str, Any] = self._call("state")
        return result

    @property
    def state(self) -> str:
        return str(self.info()["state"])

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("status")
        return result

    def logs(self) -> str:
        return str(self._call("logs"))

    # ------------------------------------------------------------ guest

    def exec(self, argv: Sequence[str] | str, *, env: EnvArg = None, workdir: str | None = None,
             user: str | None = None, stdin: bytes | None = None, timeout: float | None = None,
             output_limit: int | None = DEFAULT_OUTPUT_LIMIT) -> Any:
        """Run a command and wait for it: an :class:`~microagent.channel.ExecResult`."""
        return self._call("exec", _argv(argv), env=_env_list(env), workdir=workdir, user=user, stdin=stdin,
                          timeout=timeout, output_limit=output_limit)

    def put(self, guest_path: str, source: bytes | str | os.PathLike[str] | IO[bytes], *,
            mode: int | None = None, mkdirs: bool = False) -> int:
        data, local_mode = _source_bytes(source)
        return int(self._call("put", guest_path, data, mode=mode if mode is not None else local_mode,
                              mkdirs=mkdirs))

    def read_file(self, guest_path: str, dest: str | os.PathLike[str] | None = None, *,
                  max_bytes: int | None = DEFAULT_OUTPUT_LIMIT) -> bytes | int:
        """The guest file's bytes, or (with ``dest``) write them to a local file (0600) and return the count."""
        data: bytes = self._call("read_file", guest_path, max_bytes=max_bytes)
        if dest is None:
            return data
        from pathlib import Path

        from microagent.fsutil import atomic_write

        atomic_write(Path(dest), data)
        return len(data)

    # ------------------------------------------------------------ lifecycle

    def start(self, *, boot_timeout: float = 60.0, from_snapshot: str | None = None,
              cold: bool = False) -> "ClusterWorkspace":
        self._call("start", boot_timeout=boot_timeout, from_snapshot=from_snapshot, cold=cold)
        return self

    def halt(self) -> None:
        self._call("halt")

    def stop(self) -> None:
        self._call("stop")

    def kill(self) -> None:
        self._call("kill")

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def delete(self, *, force: bool = False) -> bool:
        return bool(self.cluster.delete(self.name, force=force)["deleted"])

    def snapshot(self, tag: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("snapshot", tag)
        return result

    def snapshots(self) -> builtins.list[dict[str, Any]]:
        result: builtins.list[dict[str, Any]] = self._call("snapshots")
        return result

    def fork(self, name: str, tag: str) -> "ClusterWorkspace":
        """A new running workspace ``name`` from this one's snapshot ``tag``, on the same node."""
        check_name(name)
        registry = self.cluster._registry
        ray = self.cluster._ray
        holder = ray.get(registry.reserve.remote(name, self.node))
        if holder is not None:
            raise Conflict(f"workspace {name} exists already in the cluster", "pick another name")
        try:
            self.cluster.call(self.node, name, "fork", name, f"{self.name}:{tag}")
        except BaseException:
            ray.get(registry.release.remote(name, self.node))
            raise
        return ClusterWorkspace(self.cluster, name, self.node, self.hostname)
