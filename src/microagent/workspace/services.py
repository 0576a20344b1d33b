"""Setup commands and the service of a workspace (docs/services.md).

- ``setup``: commands run once, in order, at the first start, after the guest
  is ready, each as ``sh -c CMD`` over the channel with the image's user,
  working directory and env.  ``setup.json`` beside ``workspace.json`` records
  that they ran, so later starts skip them; a failing one stops the VM,
  records the workspace ``failed`` and keeps the command's exit code and the
  tail of its output for ``status``.
- ``service``: one long-running command guest init starts on every boot from
  the config disk (:class:`~microagent.vmkit.types.Service`) and restarts by
  ``restart`` with a backoff; its output is a rotated log in the guest
  (``/run/microagent/service.log``) and its state a small JSON file there,
  both read over the channel (:func:`service_status`, :func:`service_log`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microagent.errors import InvalidRequest, MicroagentError, Permanent
from microagent.paths import workspace_dir

if TYPE_CHECKING:
    from microagent.vmkit.types import Service
    from microagent.workspace.lifecycle import WorkspaceStore
    from microagent.workspace.manifest import Manifest

RESTART_POLICIES = ("never", "on-failure", "always")  # = vmkit.types.RESTART_POLICIES (not imported: cost)
SETUP_RECORD = "setup.json"
#: how much of a failed setup command's output ``status`` keeps (its end)
SETUP_OUTPUT_TAIL = 8 << 10
MAX_COMMAND_CHARS = 8192  # = vmkit.types.SERVICE_FIELD_MAX
MAX_SETUP_COMMANDS = 64
GUEST_SERVICE_LOG = "/run/microagent/service.log"
GUEST_SERVICE_STATE = "/run/microagent/service.json"
SERVICE_LOG_MAX = 1 << 20  # both rotated files together, at most


def check_services(setup: Sequence[str] = (), service: str | None = None,
                   restart: str = "never") -> tuple[tuple[str, ...], str, str]:
    """The one check of ``--setup``, ``--service`` and ``--restart`` (create, run, spec files).

    :returns: the setup commands, the service command ("" for none), the policy.
    :raises InvalidRequest: an empty, over-long or NUL-carrying command, too many setup
        commands, an unknown policy, or a policy without a service.
    """
    if isinstance(setup, str):
        setup = (setup,)
    if len(setup) > MAX_SETUP_COMMANDS:
        raise InvalidRequest(f"{len(setup)} setup commands; at most {MAX_SETUP_COMMANDS}",
                             "join them into a script and run that")
    for what, cmd in [*((f"setup command {i + 1}", c) for i, c in enumerate(setup)),
                      *([("service", service)] if service is not None else [])]:
        if not isinstance(cmd, str) or not cmd.strip():
            raise InvalidRequest(f"{what} is empty", "give a shell command, e.g. --setup 'apk add git'")
        if "\0" in cmd or len(cmd) > MAX_COMMAND_CHARS:
            raise InvalidRequest(f"{what} is longer than {MAX_COMMAND_CHARS} characters or holds a NUL byte",
                                 "put it in a script in the image or a volume and run that")
    if restart not in RESTART_POLICIES:
        raise InvalidRequest(f"restart policy {restart!r} is unknown", f"use one of: {', '.join(RESTART_POLICIES)}")
    if restart != "never" and not service:
        raise InvalidRequest(f"--restart {restart} needs --service", "add --service 'CMD', or drop --restart")
    return tuple(setup), service or "", restart


def service_config(manifest: Manifest) -> Service | None:
    """The config disk's ``service`` object of ``manifest`` (None without a service)."""
    if not manifest.service:
        return None
    from microagent.vmkit.types import Service

    return Service(command=manifest.service, restart=manifest.restart,  # type: ignore[arg-type]
                   user=manifest.image.user, workdir=manifest.image.workdir)


# ------------------------------------------------------------------ setup


def record_path(root: Path, name: str) -> Path:
    return workspace_dir(root, name) / SETUP_RECORD


def load_record(root: Path, name: str) -> dict[str, Any] | None:
    """``setup.json`` of ``name``, or None when its setup never ran (or it has none)."""
    try:
        doc = json.loads(record_path(root, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def save_record(directory: Path, doc: dict[str, Any]) -> None:
    """Write ``setup.json`` into a workspace's directory (or a create's staging one)."""
    from microagent.fsutil import atomic_write

    atomic_write(directory / SETUP_RECORD, json.dumps(doc, indent=2).encode() + b"\n")


def setup_pending(root: Path, manifest: Manifest) -> bool:
    record = load_record(root, manifest.name)
    return bool(manifest.setup) and not (record and record.get("state") == "done")


class _Tail:
    """The last ``limit`` bytes written to it (stdout and stderr interleaved)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        over = len(self.data) - self.limit
        if over > 0:
            del self.data[:over]
            self.dropped += over

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def run_setup(store: WorkspaceStore, manifest: Manifest, client: Any) -> dict[str, Any] | None:
    """Run ``manifest``'s pending setup commands in its running guest (the caller holds its lock).

    :returns: the setup record, or None when nothing was pending.
    :raises Permanent: when a command failed: the VM is halted (killed if that fails), the
        workspace recorded ``failed``, and ``setup.json`` holds the exit code and output tail.
    """
    from microagent.vmkit.types import now_rfc3339
    from microagent.workspace.sessions import GuestConnection

    if not setup_pending(store.root, manifest):
        return None
    name = manifest.name
    started = now_rfc3339()
    with GuestConnection(store, name, "exec") as guest:
        for i, cmd in enumerate(manifest.setup):
            tail = _Tail(SETUP_OUTPUT_TAIL)
            result = guest.exec(["sh", "-c", cmd], stdout=tail, stderr=tail)
            if result.exit_code == 0:
                continue
            record = {"state": "failed", "startedAt": started, "failedAt": now_rfc3339(), "step": i + 1,
                      "steps": len(manifest.setup), "command": cmd, "status": result.status,
                      "exitCode": result.exit_code, "outputTail": tail.text(), "outputDropped": tail.dropped}
            save_record(workspace_dir(store.root, name), record)
            guest.close()
            _stop_failed(store, manifest, client, f"setup command {i + 1} exited with {result.exit_code}")
            last = tail.text().strip().splitlines()[-1:] or [""]
            raise Permanent(f"setup command {i + 1} of {len(manifest.setup)} ({cmd!r}) of workspace {name} "
                           f"exited with {result.exit_code}" + (f": {last[0][:200]}" if last[0] else "")
                           + "; the workspace is failed",
                           f"see its output with 'microagent status {name}'; 'microagent start {name}' runs the "
                           "setup again, 'microagent apply -f FILE --recreate' rebuilds it with another",
                           state="failed", operation="start", exitCode=result.exit_code)
    record = {"state": "done", "startedAt": started, "doneAt": now_rfc3339(), "steps": len(manifest.setup)}
    save_record(workspace_dir(store.root, name), record)
    return record


def _stop_failed(store: WorkspaceStore, manifest: Manifest, client: Any, why: str) -> None:
    """Halt (else kill) the VM whose setup failed, then record it ``failed``."""
    from microagent.runtime_state import RuntimeDir
    from microagent.vmkit.states import WorkspaceState
    from microagent.vmkit.types import Identity, new_request_id

    for op in ("halt", "kill"):
        try:
            client.send(op, manifest.name, timeout=60)
            break
        except MicroagentError:
            continue
    identity = Identity(requestID=new_request_id(), runtimeID=manifest.name, role="workload",
                        backend=manifest.backend)  # type: ignore[arg-type]
    RuntimeDir(store.runtime_path(manifest.name)).record(identity, WorkspaceState.FAILED, f"setup failed: {why}",
                                                          best_effort=True)


def mark_setup_done(directory: Path, manifest: Manifest, why: str) -> None:
    """For a workspace whose disk comes from one that had run its setup (a fork, a clone)."""
    if manifest.setup:
        from microagent.vmkit.types import now_rfc3339

        save_record(directory, {"state": "done", "doneAt": now_rfc3339(), "steps": len(manifest.setup),
                                          "inherited": why})


# ------------------------------------------------------------------ the service, read from the guest


def service_status(store: WorkspaceStore, manifest: Manifest, *, running: bool) -> dict[str, Any] | None:
    """``{command, restart, state, pid, restarts, lastExit, ...}``; the live part is asked from
    the guest when it runs (``reason`` says why not)."""
    if not manifest.service:
        return None
    out: dict[str, Any] = {"command": manifest.service, "restart": manifest.restart}
    if not running:
        return {**out, "state": "not running", "reason": "the workspace is not running"}
    from microagent.workspace.sessions import GuestConnection

    try:
        with GuestConnection(store, manifest.name, "exec") as guest:
            raw = guest.get(GUEST_SERVICE_STATE, max_bytes=64 << 10, idle_timeout=10.0)
    except MicroagentError as exc:
        return {**out, "state": "unknown", "reason": exc.message}
    try:
        live = json.loads(bytes(raw))  # type: ignore[arg-type]
    except ValueError:
        return {**out, "state": "unknown", "reason": f"{GUEST_SERVICE_STATE} is not JSON"}
    if not isinstance(live, dict):
        return {**out, "state": "unknown", "reason": f"{GUEST_SERVICE_STATE} is not an object"}
    keep = ("state", "pid", "restarts", "lastExit", "startedAtMs", "restartInMs")
    return {**out, **{k: live[k] for k in keep if k in live}}


def service_log(store: WorkspaceStore, name: str) -> tuple[bytes, bytes]:
    """The service's output kept in the guest: the rotated file and the current one.

    :raises Conflict: unless the workspace is running.
    :raises InvalidRequest: when it has no service.
    """
    from microagent.channel import GuestNotFound
    from microagent.workspace.sessions import GuestConnection

    manifest = store.manifest(name)
    if not manifest.service:
        raise InvalidRequest(f"workspace {name} has no service",
                             "create it with --service 'CMD' (or a spec file's service:)")
    out = []
    with GuestConnection(store, name, "exec") as guest:
        for path in (GUEST_SERVICE_LOG + ".1", GUEST_SERVICE_LOG):
            try:
                out.append(bytes(guest.get(path, max_bytes=SERVICE_LOG_MAX, idle_timeout=10.0)))  # type: ignore[arg-type]
            except GuestNotFound:
                out.append(b"")  # not rotated yet, or the service never started
    return out[0], out[1]


def status_fields(store: WorkspaceStore, manifest: Manifest, *, running: bool) -> dict[str, Any]:
    """``status``'s ``setup`` and ``service`` entries (none when the workspace has neither)."""
    out: dict[str, Any] = {}
    if manifest.setup:
        record = load_record(store.root, manifest.name) or {"state": "pending"}
        out["setup"] = {"commands": list(manifest.setup), **record}
    service = service_status(store, manifest, running=running)
    if service is not None:
        out["service"] = service
    return out


def follow_service_log(store: WorkspaceStore, name: str, *, poll_s: float = 1.0,
                       offset: int | None = None) -> Iterator[bytes]:
    """What the service writes from now on (from ``offset`` of the current log file when given),
    polled every ``poll_s`` seconds until the workspace stops running; a rotation in between
    yields the rest of ``service.log.1`` first.

    :raises Conflict: unless the workspace is running when it starts.
    """
    import time

    from microagent.channel import GuestNotFound
    from microagent.workspace.sessions import GuestConnection

    with GuestConnection(store, name, "exec") as guest:
        def read(path: str) -> bytes:
            try:
                return bytes(guest.get(path, max_bytes=SERVICE_LOG_MAX, idle_timeout=10.0))  # type: ignore[arg-type]
            except GuestNotFound:
                return b""

        if offset is None:
            offset = len(read(GUEST_SERVICE_LOG))
        while True:
            current = read(GUEST_SERVICE_LOG)
            if len(current) < offset:  # rotated: the old file's end, then the new file
                yield read(GUEST_SERVICE_LOG + ".1")[offset:]
                offset = 0
            if len(current) > offset:
                yield current[offset:]
                offset = len(current)
            time.sleep(poll_s)
            try:
                observed = store.observe(name)
            except MicroagentError:
                return
            if not observed.alive:
                return
