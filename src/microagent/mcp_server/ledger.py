"""The workspaces one MCP server created: what counts against its cap, and what ``--cleanup`` removes.

A name is held from the moment a create is admitted (so two concurrent creates
cannot both squeeze under the cap) until the workspace is deleted, through the
server or by anyone else: a workspace that no longer exists stops counting.
Throwaway ``run`` VMs count while they run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from microagent.errors import MicroagentError, ResourceExhausted
from microagent.workspace.lifecycle import WorkspaceStore, check_name


class Ledger:
    def __init__(self, store: WorkspaceStore, cap: int) -> None:
        self._store = store
        self._cap = cap
        self._lock = threading.RLock()  # cleanup may run in a signal handler on a thread holding it
        self._names: set[str] = set()
        self._runs = 0

    @property
    def names(self) -> list[str]:
        """The workspaces this server created that still exist."""
        with self._lock:
            self._forget_gone()
            return sorted(self._names)

    def _forget_gone(self) -> None:
        self._names = {n for n in self._names if self._store.exists(n)}

    def _admit(self, what: str) -> None:
        self._forget_gone()
        in_use = len(self._names) + self._runs
        if in_use >= self._cap:
            raise ResourceExhausted(
                f"this MCP server may have {self._cap} workspaces at once and has {in_use}; cannot {what}",
                "delete one it created (workspace_delete), or restart the server with a higher --max-workspaces")

    @contextmanager
    def creating(self, name: str) -> Iterator[None]:
        """Hold a place for ``name`` while it is created; release it if the create fails.

        :raises InvalidRequest: for an unsafe name (never held).
        :raises ResourceExhausted: when the cap is reached.
        """
        check_name(name)
        with self._lock:
            self._admit(f"create {name}")
            self._names.add(name)
        try:
            yield
        except BaseException:
            with self._lock:
                if not self._store.exists(name):
                    self._names.discard(name)
            raise

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count a throwaway ``run`` VM against the cap while it lives.

        :raises ResourceExhausted: when the cap is reached.
        """
        with self._lock:
            self._admit("start a run")
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1

    def cleanup(self) -> list[tuple[str, str]]:
        """Delete (killing first) every workspace this server created; returns ``(name, error)`` failures."""
        failures = []
        for name in self.names:
            try:
                self._store.delete(name, force=True)
            except MicroagentError as exc:
                failures.append((name, exc.message))
        with self._lock:
            self._forget_gone()
        return failures
