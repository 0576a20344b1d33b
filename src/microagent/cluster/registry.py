"""Which node owns which workspace name: the cluster-wide name table.

One :class:`Registry` runs as a named Ray actor on the head node
(:mod:`.runtime`); an actor runs one call at a time, so a name is reserved
atomically and is unique across the cluster. It only maps names to nodes:
each workspace's state is its host agent's (the library's records on that
node). Host agents register what they own when they start; the actor form
(:class:`microagent.cluster.runtime.RegistryActor`) keeps the table in Ray's
GCS so that a restart of the actor loses nothing (docs/cluster.md, "Limits").
"""

from __future__ import annotations

from typing import Any


class Registry:
    def __init__(self) -> None:
        self.placed: dict[str, str] = {}  # workspace name -> node ID
        self.nodes: dict[str, dict[str, Any]] = {}  # node ID -> {hostname, stateDir}

    def register_agent(self, node_id: str, info: dict[str, Any], names: list[str]) -> list[str]:
        """Record a (re)started agent and the workspaces it found; returns the names
        another node holds already (those stay with that node)."""
        self.nodes[node_id] = dict(info)
        clashes = []
        for name in names:
            owner = self.placed.setdefault(name, node_id)
            if owner != node_id:
                clashes.append(name)
        return clashes

    def reserve(self, name: str, node_id: str) -> str | None:
        """Claim ``name`` for ``node_id``; returns the node that holds it already (maybe the same
        one: the name is taken either way), else ``None``."""
        owner = self.placed.get(name)
        if owner is not None:
            return owner
        self.placed[name] = node_id
        return None

    def move(self, name: str, old: str, new: str) -> bool:
        """Re-point a reservation to another node (a full node made placement try the next)."""
        if self.placed.get(name) != old:
            return False
        self.placed[name] = new
        return True

    def release(self, name: str, node_id: str) -> None:
        """Forget ``name`` if ``node_id`` holds it (deleted, or a create that failed)."""
        if self.placed.get(name) == node_id:
            del self.placed[name]

    def lookup(self, name: str) -> str | None:
        return self.placed.get(name)

    def table(self) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
        return dict(self.placed), {k: dict(v) for k, v in self.nodes.items()}
