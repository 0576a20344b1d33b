"""The host agent: one per node, owning that node's workspaces through the ordinary library.

A :class:`HostAgent` is a plain object over a
:class:`~microagent.workspace.lifecycle.WorkspaceStore` (its own state
directory); :mod:`.runtime` runs it as a Ray actor pinned to its node. Every
workspace of the node is served by this one process: the VMs themselves are
detached processes of the library (docs/architecture.md, "Per-workspace
processes"), so the agent holds no more than a cached guest connection per
workspace. A restarted agent re-adopts what still runs by reading the same
state directory (the library reconciles records with the process table).

Calls come in through :meth:`HostAgent.call`, which returns a result
envelope instead of raising, so a :class:`~microagent.errors.MicroagentError`
crosses Ray with its kind, message and remediation intact.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from microagent.cluster.capabilities import HOST_RESERVE_MIB, detect_capabilities, mem_available_mib
from microagent.cluster.placement import Offer
from microagent.errors import MicroagentError, ResourceExhausted
from microagent.workspace.lifecycle import WorkspaceStore, check_env, check_name
from microagent.workspace.sessions import DEFAULT_OUTPUT_LIMIT, GuestConnection

#: states whose memory is spoken for (a prepared workspace is about to boot)
HOLDS_MEMORY = frozenset({"prepared", "starting", "running", "paused", "quarantined", "unknown"})
#: what :meth:`HostAgent.call` dispatches: nothing else is reachable over Ray
OPERATIONS = frozenset({"ping", "offer", "list", "create", "fork", "state", "status", "logs", "exec", "put",
                        "read_file", "start", "halt", "stop", "kill", "pause", "resume", "delete", "snapshot",
                        "snapshots"})


class HostAgent:
    """The workspaces of one node.

    :param node_id: the Ray node it serves (named in every error and listing).
    :param state_dir: its state root (``None``: ``MICROAGENT_STATE_DIR`` or ``~/.microagent``).
    :param capabilities: values that replace detected ones (e.g. ``{"kvm": 0}``).
    :param max_workspaces: the most workspaces it owns (``None``: memory is the only limit).
    :param memory_budget_mib: guest memory it hands out (``None``: the host's less 1 GiB).
    """

    def __init__(self, node_id: str, *, state_dir: str | Path | None = None,
                 capabilities: Mapping[str, Any] | None = None, max_workspaces: int | None = None,
                 memory_budget_mib: int | None = None) -> None:
        self.node_id = node_id
        self.store = WorkspaceStore(state_dir)
        self.capabilities = detect_capabilities(capabilities)
        self.hostname = str(self.capabilities["hostname"])
        self.max_workspaces = max_workspaces
        self.budget_mib = memory_budget_mib if memory_budget_mib is not None else max(
            0, int(self.capabilities["memory_mib"]) - HOST_RESERVE_MIB)
        self._sessions: dict[str, GuestConnection] = {}
        self._lock = threading.Lock()
        self._placing = threading.Lock()  # capacity check and create, one at a time
        # adoption: the library reconciles every record with the process table
        self.adopted = {w["name"]: w["state"] for w in self.store.list()}

    # ------------------------------------------------------------ dispatch

    def call(self, op: str, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        """``("ok", result)`` or ``("err", MicroagentError)``; never raises a library error."""
        if op not in OPERATIONS:
            return "err", MicroagentError(f"host agent has no operation {op!r}", "a client/agent version mismatch")
        try:
            return "ok", getattr(self, op)(*args, **kwargs)
        except MicroagentError as exc:
            return "err", _portable(exc)

    def ping(self) -> dict[str, Any]:
        return {"nodeId": self.node_id, "hostname": self.hostname, "stateDir": str(self.store.root),
                "pid": os.getpid(), "adopted": dict(self.adopted)}

    # ------------------------------------------------------------ capacity

    def offer(self) -> Offer:
        rows = self.store.list()
        committed = sum(int(w["resources"].get("memoryMiB", 0)) for w in rows if w["state"] in HOLDS_MEMORY)
        free = min(self.budget_mib - committed, mem_available_mib() or self.budget_mib)
        return Offer(self.node_id, self.hostname, dict(self.capabilities), max(0, free), len(rows),
                     self.max_workspaces)

    def list(self) -> list[dict[str, Any]]:
        return [{**w, "node": self.node_id, "hostname": self.hostname} for w in self.store.list()]

    # ------------------------------------------------------------ create

    def create(self, name: str, *, image: str, profile: str | None = None, memory_mib: int | None = None,
               cpus: int | None = None, disk_size_mib: int | None = None, env: Sequence[str] = (),
               network: str = "isolated", start: bool = True, boot_timeout: float = 60.0) -> dict[str, Any]:
        """Create (and boot) ``name`` here; :raises ResourceExhausted: when the node is full."""
        from microagent.workspace.profiles import get_profile

        check_name(name)
        env = check_env(env)
        need = memory_mib or get_profile(profile).memory_mib
        with self._placing:
            offer = self.offer()
            if not offer.fits(need):
                raise ResourceExhausted(
                    f"node {self.hostname} ({self.node_id[:8]}) is full: {offer.free_mib} MiB free, "
                    f"{offer.workspaces} workspaces" + (f" of {self.max_workspaces}" if self.max_workspaces else ""),
                    "delete or halt workspaces on it, or place the workspace on another node",
                    node=self.node_id)
            self.store.create(name, image=image, profile=profile, memory_mib=memory_mib, cpus=cpus,
                              disk_size_mib=disk_size_mib, env=env, network=network)
        if start:
            self.store.start(name, boot_timeout=boot_timeout)
        return self.state(name)

    def fork(self, name: str, source: str, *, boot_timeout: float = 60.0) -> dict[str, Any]:
        """A new running workspace ``name`` from snapshot ``source`` (``WORKSPACE:TAG``) of this node."""
        check_name(name)
        with self._placing:
            self.store.fork(name, source, boot_timeout=boot_timeout)
        return self.state(name)

    # ------------------------------------------------------------ state

    def state(self, name: str) -> dict[str, Any]:
        obs = self.store.observe(name)
        return {"name": name, "state": obs.state.value, "node": self.node_id, "hostname": self.hostname,
                "pid": obs.pid if obs.alive else None}

    def status(self, name: str) -> dict[str, Any]:
        from microagent.workspace.status import workspace_status

        return {**workspace_status(self.store, name), "node": self.node_id, "hostname": self.hostname}

    def logs(self, name: str) -> str:
        return b"".join(self.store.logs(name)).decode("utf-8", "replace")

    # ------------------------------------------------------------ guest

    def _guest(self, name: str) -> GuestConnection:
        """The cached connection while it is open: it closes when the VM goes, and every
        transition made through this agent (pause included) drops it, so the state is
        checked (by ``GuestConnection``) whenever a new one is opened."""
        with self._lock:
            session = self._sessions.get(name)
            if session is not None and not session.closed:
                return session
            session = self._sessions[name] = GuestConnection(self.store, name, "exec")
            return session

    def _close(self, name: str) -> None:
        with self._lock:
            session = self._sessions.pop(name, None)
        if session is not None:
            session.close()

    def exec(self, name: str, argv: Sequence[str], *, env: Sequence[str] = (), workdir: str | None = None,
             user: str | None = None, stdin: bytes | None = None, timeout: float | None = None,
             output_limit: int | None = DEFAULT_OUTPUT_LIMIT) -> Any:
        return self._guest(name).exec(list(argv), env=check_env(env), workdir=workdir, user=user,
                                      timeout=timeout, stdin=stdin, output_limit=output_limit)

    def put(self, name: str, guest_path: str, data: bytes, *, mode: int | None = None, mkdirs: bool = False) -> int:
        return self._guest(name).put(guest_path, data, mode=mode, mkdirs=mkdirs)

    def read_file(self, name: str, guest_path: str, *, max_bytes: int | None = DEFAULT_OUTPUT_LIMIT) -> bytes:
        data = self._guest(name).get(guest_path, max_bytes=max_bytes)
        assert isinstance(data, bytes)
        return data

    # ------------------------------------------------------------ lifecycle

    def start(self, name: str, *, boot_timeout: float = 60.0, from_snapshot: str | None = None,
              cold: bool = False) -> dict[str, Any]:
        self._close(name)
        return self.store.start(name, boot_timeout=boot_timeout, from_snapshot=from_snapshot, cold=cold).to_json()

    def _transition(self, op: str, name: str) -> dict[str, Any]:
        self._close(name)
        result: dict[str, Any] = getattr(self.store, op)(name).to_json()
        return result

    def halt(self, name: str) -> dict[str, Any]:
        return self._transition("halt", name)

    def stop(self, name: str) -> dict[str, Any]:
        return self._transition("stop", name)

    def kill(self, name: str) -> dict[str, Any]:
        return self._transition("kill", name)

    def pause(self, name: str) -> dict[str, Any]:
        return self._transition("pause", name)

    def resume(self, name: str) -> dict[str, Any]:
        return self._transition("resume", name)

    def delete(self, name: str, *, force: bool = False) -> dict[str, Any]:
        self._close(name)
        return self.store.delete(name, force=force)

    def snapshot(self, name: str, tag: str) -> dict[str, Any]:
        return self.store.snapshot(name, tag)

    def snapshots(self, name: str) -> list[dict[str, Any]]:
        return self.store.snapshots(name)


def _portable(exc: MicroagentError) -> MicroagentError:
    """``exc`` itself when it survives pickling (Ray's transport), else its kind, message and remediation."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any error class whose constructor pickling cannot call
        return MicroagentError.from_dict(exc.to_dict())

