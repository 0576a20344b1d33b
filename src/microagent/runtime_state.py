"""The runtime directory of one workspace: ``<stateDir>/run/<name>/``.

Owns the files a supervisor writes there (docs/state.md):
``runtime.json`` (pid, sockets, config: a :class:`RuntimeRecord`), ``event.json`` (latest event),
``events.jsonl`` (append-only timeline), ``serial.log``, ``result.json``.
Every JSON write is atomic (temp file + fsync + rename); the directory is
0700 and every file 0600 whatever the umask.  :func:`locate_runtime_dir`
moves a directory of the earlier ``<stateDir>/<name>/`` layout forward.

A full host disk (the state directory shares it with the VM's disk) must not
stop a kill, stop or delete: a state record that finds no space for a temp
file overwrites the old file in the blocks it already has when the new one
fits, and is otherwise skipped (``best_effort``), to be reconciled with the
process table by the next inspect.  The live facts come from the VMM.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgspec import Struct, field, structs

from microagent.fsutil import (
    atomic_write,
    open_private_append,
    overwrite_in_place,
    private_dir,
)
from microagent.paths import (
    STATE_ROOT_ENTRIES,
    legacy_runtime_dir,
    runtime_dir,
    workspace_dir,
)
from microagent.vmkit.states import LIVE_STATES, WorkspaceState

if TYPE_CHECKING:  # the wire types (msgspec) load only to record: readers (exec's state check) skip them
    from microagent.vmkit.types import Event, Identity

#: Recorded states in which a VMM may be running from the directory (it must not move then).
_VMM_MAY_RUN = LIVE_STATES | {WorkspaceState.FAILED}


class RuntimeRecord(Struct, frozen=True):
    """``runtime.json``: what the supervisor knows of the workspace's current boot.

    Unset (``None``) fields are left out of the file; keys this version does not
    know are kept in ``extra`` and written back, so records of other versions
    load and survive an update.
    """

    state: WorkspaceState = WorkspaceState.UNKNOWN
    updatedAt: str | None = None
    backend: str | None = None
    #: the request's config (wire form) of the last prepare or boot
    config: dict[str, Any] | None = None
    readiness: str | None = None
    startedAt: str | None = None
    bootSeconds: float | None = None
    vmmSeconds: float | None = None
    serialLogPath: str | None = None
    controlSocket: str | None = None
    #: the VMM process (qemu, firecracker, apple-vf's vmhost) and its command line
    pid: int | None = None
    starttime: int | None = None
    argv: list[str] | None = None
    #: the channel helper (microagent.channel.router)
    routerPid: int | None = None
    routerStarttime: int | None = None
    #: hyperv: the compute system, its Hyper-V socket VmId, the helper and the rootfs VHD's seed
    systemId: str | None = None
    vmId: str | None = None
    helper: dict[str, Any] | None = None
    rootfsSeed: dict[str, Any] | None = None
    #: the state a pause came from, and why the VMM paused the VM on its own
    pausedFrom: WorkspaceState | None = None
    pausedReason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RuntimeRecord":
        known = set(cls.__struct_fields__) - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["state"] = WorkspaceState.parse(values.get("state"))
        if values.get("pausedFrom") is not None:
            values["pausedFrom"] = WorkspaceState.parse(values["pausedFrom"])
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        doc = dict(self.extra)
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name != "extra" and value is not None:
                doc[name] = value.value if isinstance(value, WorkspaceState) else value
        return doc

    def updated(self, **changes: Any) -> "RuntimeRecord":
        return structs.replace(self, **changes)


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_json_atomic(path: Path, data: Any, *, best_effort: bool = False) -> None:
    """``data`` as JSON in ``path`` (0600), atomically; the directory is created 0700.

    With no space for the temp file the old file is overwritten in place if the
    new content fits in its blocks; failing that, ``best_effort`` skips the write
    (logged on stderr) instead of raising.
    """
    payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
    try:
        private_dir(path.parent)
        atomic_write(path, payload)
    except OSError as exc:
        if not no_space(exc):
            raise
        if overwrite_in_place(path, payload):
            return
        if not best_effort:
            raise
        sys.stderr.write(f"microagent: {path.name} not updated: the disk is full\n")


def locate_runtime_dir(root: Path, name: str) -> Path:
    """The runtime directory of workspace ``name``: ``<root>/run/<name>``.

    A workspace of an earlier version has it at ``<root>/<name>``.  Such a
    directory (only for a workspace whose manifest exists, never one of the
    root's own folders) is renamed into place the first time it is looked up
    at rest.  While its record says a VMM may run there it is used where it
    is: the VMM's relative sockets would survive a rename, but recorded paths,
    the helper's arguments and TAP/namespace names derived from the path would
    not.  The first stop, halt, kill or reconciliation puts it at rest.
    """
    current = runtime_dir(root, name)
    old = legacy_runtime_dir(root, name)
    if (current.exists() or name in STATE_ROOT_ENTRIES or not (old / "runtime.json").is_file()
            or not (workspace_dir(root, name) / "workspace.json").is_file()):
        return current
    recorded = read_json(old / "runtime.json")
    state = recorded.get("state") if isinstance(recorded, dict) else None
    if state in _VMM_MAY_RUN:
        return old
    private_dir(current.parent)
    try:
        os.rename(old, current)
    except OSError:
        return current if current.exists() else old  # another process moved it first, or cannot
    return current


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        return None


class RuntimeDir(Struct, frozen=True):
    path: Path

    @property
    def runtime_json(self) -> Path:
        return self.path / "runtime.json"

    @property
    def event_json(self) -> Path:
        return self.path / "event.json"

    @property
    def events_log(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def serial_log(self) -> Path:
        return self.path / "serial.log"

    @property
    def vmm_log(self) -> Path:
        return self.path / "vmm.log"

    @property
    def result_json(self) -> Path:
        return self.path / "result.json"

    @property
    def channel_socket(self) -> Path:
        return self.path / "channel.sock"

    @property
    def control_socket(self) -> Path:
        return self.path / "control.sock"

    def create(self) -> None:
        private_dir(self.path)

    def record(self, identity: Identity, state: WorkspaceState, detail: str = "", *, best_effort: bool = False,
               **runtime_updates: Any) -> Event:
        """Set the workspace's state: ``runtime.json`` updated (``runtime_updates`` name
        :class:`RuntimeRecord` fields), then the event logged.

        ``best_effort``: on a full disk skip what cannot be written rather than raise.
        """
        from microagent.vmkit.types import Event

        state = WorkspaceState(state)
        event = Event(identity=identity, state=state.value, detail=detail)
        runtime = (self.runtime() or RuntimeRecord()).updated(**runtime_updates, state=state,
                                                              updatedAt=event.observedAt)
        write_json_atomic(self.runtime_json, runtime.to_json(), best_effort=best_effort)
        self.record_event(event, best_effort=best_effort)
        return event

    def record_event(self, event: Event, *, best_effort: bool = False) -> None:
        """Write ``event.json`` and append the event to ``events.jsonl``."""
        from microagent.vmkit.types import to_wire

        doc = to_wire(event)
        write_json_atomic(self.event_json, doc, best_effort=best_effort)
        try:
            fd = open_private_append(self.events_log)
            try:
                os.write(fd, (json.dumps(doc, sort_keys=True) + "\n").encode("utf-8"))
            finally:
                os.close(fd)
        except OSError as exc:
            if not (best_effort and no_space(exc)):
                raise

    def runtime(self) -> RuntimeRecord | None:
        data = read_json(self.runtime_json)
        return RuntimeRecord.from_json(data) if isinstance(data, dict) else None

    def update_runtime(self, **changes: Any) -> RuntimeRecord:
        """Change fields of ``runtime.json`` without recording a new state."""
        runtime = (self.runtime() or RuntimeRecord()).updated(**changes)
        write_json_atomic(self.runtime_json, runtime.to_json())
        return runtime

    def recorded_state(self) -> WorkspaceState:
        runtime = self.runtime()
        return runtime.state if runtime is not None else WorkspaceState.UNKNOWN

    def serial_tail(self, lines: int = 20) -> str:
        try:
            with open(self.serial_log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 8192))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])
