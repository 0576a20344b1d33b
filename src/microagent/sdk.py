"""The Python API of microagent: named workspaces and one-shot runs.

::

    import microagent

    with microagent.Workspace.create("demo") as ws:       # created and started
        r = ws.exec(["sh", "-c", "echo hello; uname -r"])
        print(r.exit_code, r.stdout.decode())
        ws.put("/tmp/in.txt", b"data")
        print(ws.read_file("/tmp/in.txt"))
    # leaving the block kills and deletes the workspace it created

    with microagent.Workspace.open("demo2") as ws:        # an existing one
        ws.exec("true")
    # ... which leaving the block only disconnects from

    r = microagent.run("builtin:busybox", ["uname", "-a"])  # throwaway VM

Errors are the one tree of :mod:`microagent.errors` (re-exported from
``microagent``): ``NotFound``, ``Conflict`` (e.g. exec in a quarantined
workspace), ``Unsupported``, ``Permanent``/``InvalidRequest``,
``Transient``/``ChannelClosed``, ``PolicyDenied``, ``ResourceExhausted``,
each with ``kind``, ``message`` and ``remediation``. A guest command's
non-zero exit is a result, not an error.

This module is a thin facade over :mod:`microagent.workspace`; the CLI is
another one over the same library.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from microagent.durations import optional_seconds, seconds
from microagent.workspace.lifecycle import DEFAULT_IMAGE, WorkspaceStore
from microagent.workspace.sessions import DEFAULT_OUTPUT_LIMIT
from microagent.workspace.state import ALLOWED_FROM, WorkspaceState, require_state

if TYPE_CHECKING:
    from microagent.channel import ExecResult, FileStat
    from microagent.channel.exec import OutputSink
    from microagent.workspace.sessions import GuestConnection

__all__ = ["Workspace", "run"]

EnvArg = Mapping[str, str] | Sequence[str] | None
#: hosts to allow, or {"allowHosts": [...], "allowCidrs": [...]} (docs/egress.md)
EgressArg = Sequence[str] | Mapping[str, Sequence[str]] | None


def _env_list(env: EnvArg) -> list[str]:
    if env is None:
        return []
    if isinstance(env, Mapping):
        return [f"{k}={v}" for k, v in env.items()]
    return [str(e) for e in env]


def _argv(argv: Sequence[str] | str) -> list[str]:
    return ["/bin/sh", "-c", argv] if isinstance(argv, str) else [str(a) for a in argv]


class _DeprecatedGet:
    """``get``, the old spelling of two calls: ``Workspace.get(name)`` is :meth:`Workspace.open`,
    ``ws.get(path)`` is :meth:`Workspace.read_file`.  Both still work, with a
    ``DeprecationWarning``; they go in the next release."""

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        import functools

        if obj is None:
            return functools.partial(_deprecated, "Workspace.get(name)", "Workspace.open(name)", objtype.open)
        return functools.partial(_deprecated, "ws.get(path)", "ws.read_file(path)", obj.read_file)


def _deprecated(old: str, new: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    import warnings

    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
    return call(*args, **kwargs)


class Workspace:
    """A named workspace: a VM with its own disk that outlives this process.

    Get one with :meth:`create` (a new workspace) or :meth:`open` (an existing
    one).  Used as a context manager, leaving the block closes the channel
    connection, and for a workspace this object created also kills the VM and
    deletes the workspace (disk included); one obtained with :meth:`open` is
    left as it is.

    One channel connection is kept open between calls (closed by
    :meth:`close`, by every lifecycle call and on exit); :meth:`exec`,
    :meth:`put` and :meth:`read_file` may be called from several threads at once.
    """

    def __init__(self, name: str, *, state_dir: str | Path | None = None, supervisor: str | None = None,
                 store: WorkspaceStore | None = None) -> None:
        self._store = store or WorkspaceStore(state_dir, supervisor)
        self.name = name
        self._lock = threading.Lock()
        self._session: GuestConnection | None = None
        self._created = False  # by create(): then leaving a with block deletes it

    def __repr__(self) -> str:
        return f"Workspace({self.name!r})"

    # ------------------------------------------------------------ construction

    @classmethod
    def create(cls, name: str, image: str = DEFAULT_IMAGE, *, profile: str | None = None,
               memory_mib: int | None = None, cpus: int | None = None, disk_size_mib: int | None = None,
               env: EnvArg = None, network: str = "isolated", allow_host_loopback: bool = False,
               backend: str | None = None, egress: EgressArg = None,
               secrets: Sequence[str] = (), secret_hosts: Sequence[str] = (),
               start: bool = True, boot_timeout: float = 60.0, state_dir: str | Path | None = None,
               supervisor: str | None = None, from_snapshot: str | None = None,
               volumes: Sequence[str] = (), setup: Sequence[str] = (), service: str | None = None,
               restart: str = "never") -> "Workspace":
        """Create workspace ``name`` from ``image`` and (unless ``start=False``) boot it.

        With ``from_snapshot="WORKSPACE:TAG"`` it is a fork of that snapshot instead,
        running at once (``image`` and the resources are the snapshot's).

        :param profile: ``tiny``, ``small`` (default), ``medium`` or ``large``.
        :param env: environment every process in the guest gets.
        :param start: boot it now (``False``: leave it ``prepared``).
        :param allow_host_loopback: let the guest reach the host through its gateway (``user``:
            the host's loopback); off by default (docs/network.md).
        :param egress: the guest's egress allowlist (docs/egress.md): host names (``.suffix``
            for subdomains), or ``{"allowHosts": [...], "allowCidrs": [...]}``; needs ``isolated``.
        :param secrets: as ``--secret``: ``"NAME"`` (value from the host's $NAME), ``"NAME=@env:VAR"``
            or ``"NAME=@file:PATH"``; the guest sees a placeholder, the egress proxy puts the
            value into request headers toward the hosts ``secret_hosts`` (``"NAME=HOST"``) bind
            it to (docs/egress.md, "Secrets").  Values are read at every start.
        :param volumes: as ``-v``: ``"VOLUME:/guest/path[:ro]"`` or ``"/host/dir:/guest/path[:ro]"``
            (docs/volumes.md); a read-write volume is held until the workspace is deleted.
        :param setup: as ``--setup``: commands run once, in order, at the first start (docs/services.md).
        :param service: as ``--service``: a command guest init runs on every boot, restarted
            by ``restart`` (``never``, ``on-failure``, ``always``).
        :raises InvalidRequest: unsafe name, unknown profile, bad env, a malformed egress entry or volume.
        :raises Conflict: a workspace of that name exists.
        :raises NotFound: kernel, guest init or host tool missing.
        :raises Transient: the guest did not come up in ``boot_timeout`` (the
            workspace is left ``failed``; it is not deleted).
        """
        boot_timeout = seconds(boot_timeout, "boot_timeout")  # before anything is built
        policy = _egress_policy(network, egress, secrets, secret_hosts)
        ws = cls(name, state_dir=state_dir, supervisor=supervisor)
        if from_snapshot is not None:
            ws._store.fork(name, from_snapshot, boot_timeout=boot_timeout)
            ws._created = True
            return ws
        ws._store.create(name, image=image, profile=profile, memory_mib=memory_mib, cpus=cpus,
                         disk_size_mib=disk_size_mib, env=_env_list(env), network=network,
                         allow_host_loopback=allow_host_loopback, backend=backend, egress=policy,
                         volumes=volumes, setup=setup, service=service, restart=restart)
        ws._created = True
        if start:
            ws.start(boot_timeout=boot_timeout)
        return ws

    @classmethod
    def open(cls, name: str, *, state_dir: str | Path | None = None, supervisor: str | None = None) -> "Workspace":
        """An existing workspace.  Leaving a ``with`` block does not delete it.

        :raises NotFound: when there is none called ``name``.
        """
        ws = cls(name, state_dir=state_dir, supervisor=supervisor)
        ws._store.manifest(name)
        return ws

    @staticmethod
    def list(*, running_only: bool = False, state_dir: str | Path | None = None) -> builtins.list[dict[str, Any]]:
        """Every workspace as ``{name, state, pid, backend, image, profile, resources, createdAt}``."""
        return WorkspaceStore(state_dir).list(running_only=running_only)

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
        if self._created:
            self._store.delete(self.name, force=True)

    # ------------------------------------------------------------ state

    @property
    def state(self) -> WorkspaceState:
        """The current state, reconciled with the process table."""
        return self._store.observe(self.name).state

    def status(self) -> dict[str, Any]:
        """The ``status`` document (state, readiness, pid, resources, disk, verification)."""
        from microagent.workspace.status import workspace_status

        return workspace_status(self._store, self.name)

    def wait(self, timeout: float | None = None) -> WorkspaceState:
        """Block until the VM is no longer running; returns the state it ended in.

        :raises ResourceExhausted: when ``timeout`` seconds pass first.
        :raises Permanent: for a ``timeout`` that is not a finite, non-negative number.
        """
        timeout = optional_seconds(timeout, "timeout")
        self.close()
        return self._store.wait(self.name, timeout=timeout).state

    def logs(self) -> str:
        """The guest serial console log so far."""
        return b"".join(self._store.logs(self.name)).decode("utf-8", "replace")

    def events(self) -> builtins.list[dict[str, Any]]:
        """The event timeline so far, oldest first."""
        return list(self._store.events(self.name))

    # ------------------------------------------------------------ lifecycle

    def start(self, *, boot_timeout: float = 60.0, from_snapshot: str | None = None,
              cold: bool = False) -> "Workspace":
        """Boot it (from prepared, halted, stopped or failed); returns when the guest is ready.

        :param from_snapshot: a tag of this workspace's: restore it instead of booting.
        :param cold: boot even when its image's boot snapshot could be restored (docs/snapshots.md).
        :raises Conflict: from any other state.
        """
        self.close()
        self._store.start(self.name, boot_timeout=boot_timeout, from_snapshot=from_snapshot, cold=cold)
        return self

    def snapshot(self, tag: str) -> dict[str, Any]:
        """Save it (running or paused) as snapshot ``tag``; it keeps running as it was."""
        return self._store.snapshot(self.name, tag)

    def restore(self, tag: str, *, boot_timeout: float = 60.0) -> "Workspace":
        """Kill it if it runs, then start it from its snapshot ``tag`` (which must exist:
        ``NotFound`` leaves it running)."""
        from microagent.workspace import snapshots

        snapshots.load(self._store.root, self.name, snapshots.check_tag(tag))
        self.close()
        if self.state in (WorkspaceState.RUNNING, WorkspaceState.PAUSED, WorkspaceState.STARTING):
            self._store.kill(self.name)
        return self.start(boot_timeout=boot_timeout, from_snapshot=tag)

    def snapshots(self) -> builtins.list[dict[str, Any]]:
        """Its snapshots, oldest first."""
        return self._store.snapshots(self.name)

    def fork(self, name: str, tag: str, *, publish: Sequence[str] = ()) -> "Workspace":
        """A new running workspace ``name`` from this one's snapshot ``tag``; a networked
        one gets its own network and publishes only ``publish`` (as ``-p``), not this one's ports."""
        ws = Workspace(name, state_dir=self._store.root, supervisor=self._store.supervisor)
        ws._store.fork(name, f"{self.name}:{tag}", publish=publish)
        ws._created = True
        return ws

    def commit(self, ref: str, *, push: bool = False, allow_insecure: bool = False) -> dict[str, Any]:
        """Save its disk (prepared, stopped or halted) as image ``ref`` (docs/commit.md):
        a name for the image cache (also sent to its registry with ``push``) or ``oci:PATH[:TAG]``.
        Returns ``{"digest", "reference", "layer", "changes", ...}``."""
        from microagent.workspace.commit import commit

        self.close()
        return commit(self._store, self.name, ref, push=push, allow_insecure=allow_insecure)

    def clone(self, name: str) -> "Workspace":
        """A copy of it (prepared, stopped or halted) as workspace ``name``, prepared."""
        from microagent.workspace.clone import clone

        clone(self._store, self.name, name)
        return Workspace(name, store=self._store)

    def stats(self) -> dict[str, Any]:
        """CPU time and memory of its VMM and helpers, guest memory, disk and network use."""
        from microagent.workspace.stats import stats

        return stats(self._store, self.name)

    def halt(self) -> None:
        """Clean shutdown through guest init (disk flushed): ``halted``."""
        self.close()
        self._store.halt(self.name)

    def stop(self) -> None:
        """SIGTERM the VMM: ``stopped`` (``Transient`` and ``failed`` if it survives)."""
        self.close()
        self._store.stop(self.name)

    def kill(self) -> None:
        """SIGKILL the VMM: ``stopped``."""
        self.close()
        self._store.kill(self.name)

    def quarantine(self) -> None:
        """Cut every host path into the guest; keep the VM process: ``quarantined``."""
        self.close()
        self._store.quarantine(self.name)

    def pause(self) -> None:
        """Stop the vcpus (memory and processes kept): ``paused``."""
        self._store.pause(self.name)

    def resume(self) -> None:
        """Continue a paused VM, also one paused because the host disk was full
        (``ResourceExhausted`` while it still is)."""
        self._store.resume(self.name)

    def delete(self, *, force: bool = False) -> bool:
        """Delete disk and state; ``force`` kills a running VM first. False if it was already gone.

        :raises Conflict: while the VM runs and ``force`` is false.
        """
        self.close()
        return bool(self._store.delete(self.name, force=force)["deleted"])

    # ------------------------------------------------------------ guest

    def _guest(self) -> "GuestConnection":
        from microagent.workspace.sessions import GuestConnection

        with self._lock:
            if self._session is not None and not self._session.closed:
                # a live connection: the record's state alone is read (a VM that died closes the
                # connection itself); the full observation only explains a refusal
                if self._store.recorded_state(self.name) not in ALLOWED_FROM["exec"]:
                    require_state("exec", self.name, self._store.observe(self.name).state)
                return self._session
            self._session = GuestConnection(self._store, self.name, "exec")
            return self._session

    def close(self) -> None:
        """Close the cached channel connection (the workspace keeps running)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def exec(self, argv: Sequence[str] | str, *, env: EnvArg = None, workdir: str | None = None,
             user: str | None = None, stdin: bytes | IO[bytes] | None = None, timeout: float | None = None,
             stdout: "OutputSink | None" = None, stderr: "OutputSink | None" = None,
             output_limit: int | None = DEFAULT_OUTPUT_LIMIT) -> "ExecResult":
        """Run a command in the running workspace and wait for it.

        :param argv: the program and its arguments; a string runs through ``/bin/sh -c``.
        :param stdin: bytes or a binary file fed to the command's stdin.
        :param timeout: seconds; then the result is ``timed_out`` with exit code 124.
        :param stdout: stream stdout here as it arrives (else it is collected in the result).
        :param output_limit: bytes kept of each collected stream (default 16 MiB;
            the rest is dropped and ``stdout_truncated``/``stderr_truncated`` say
            so); ``None`` keeps everything. Streams given a sink are not limited.
        :returns: :class:`~microagent.channel.ExecResult` (``exit_code``,
            ``stdout``, ``stderr``, ``status``, ``ok``).
        :raises Conflict: unless the workspace is running.
        :raises ChannelClosed: when the guest went away mid-command.
        :raises ChannelTimeout: when the guest goes silent (the command never
            starts, or is not ended well after ``timeout``).
        """
        timeout = optional_seconds(timeout, "timeout")
        return self._guest().exec(_argv(argv), env=_env_list(env), workdir=workdir, user=user,
                                  timeout=timeout, stdin=stdin, stdout=stdout, stderr=stderr,
                                  output_limit=output_limit)

    def put(self, guest_path: str, source: bytes | str | os.PathLike[str] | IO[bytes], *,
            mode: int | None = None, mkdirs: bool = False) -> int:
        """Write a guest file from bytes, a local path or a binary file; returns bytes written.

        :raises GuestError: e.g. a missing parent directory (pass ``mkdirs=True``).
        """
        return self._guest().put(guest_path, source, mode=mode, mkdirs=mkdirs)

    def read_file(self, guest_path: str, dest: str | os.PathLike[str] | None = None, *,
                  max_bytes: int | None = DEFAULT_OUTPUT_LIMIT) -> "bytes | FileStat":
        """A guest file's bytes, or (with ``dest``) copy it to a local path and return its stat.

        A local copy gets the guest file's ``rwx`` bits less the umask (never
        setuid/setgid/sticky).

        :param max_bytes: when reading into memory, refuse a larger file
            (default 16 MiB); ``None`` = no limit.
        :raises GuestNotFound: when the file does not exist.
        :raises ResourceExhausted: when the file is larger than ``max_bytes``.
        :raises ChannelTimeout: when the guest sends nothing for 60 s.
        """
        return self._guest().get(guest_path, dest, max_bytes=max_bytes)

    get = _DeprecatedGet()
    """Deprecated: ``Workspace.get(name)`` is :meth:`open`, ``ws.get(path)`` is :meth:`read_file`."""

    def send(self, line: str, *, timeout: float | None = None) -> "ExecResult":
        """Run one line in the guest user's shell on a pty (like ``connect --send``)."""
        timeout = optional_seconds(timeout, "timeout")
        return self._guest().send_line(line, timeout=timeout)

    def set_egress(self, egress: EgressArg = None, *, secrets: Sequence[str] | None = None,
                   secret_hosts: Sequence[str] = ()) -> dict[str, Any]:
        """Replace the egress allowlist (as ``egress=`` of :meth:`create`) and, when ``secrets``
        is given, the secrets (their values read now and handed to a running proxy); a running
        workspace applies them from its next connection (docs/egress.md).  With only
        ``secrets`` the allowlist is kept.

        :returns: ``{"egress": {...}, "applied": bool}``.
        """
        from microagent.workspace.egress import set_policy

        allowlist = egress is not None or secrets is None
        policy = _egress_policy("isolated", egress if egress is not None else [], secrets or (), secret_hosts)
        return set_policy(self._store, self.name, policy, allowlist=allowlist, secrets=secrets is not None)


def run(image: str, argv: Sequence[str] | str, *, env: EnvArg = None, workdir: str | None = None,
        user: str | None = None, timeout: float | None = None, memory_mib: int = 512, cpus: int = 1,
        backend: str | None = None, boot_timeout: float = 60.0, state_dir: str | Path | None = None,
        supervisor: str | None = None, stdout: "OutputSink | None" = None,
        stderr: "OutputSink | None" = None, egress: "EgressArg" = None, cold: bool = False,
        secrets: Sequence[str] = (), secret_hosts: Sequence[str] = (),
        volumes: Sequence[str] = (), setup: Sequence[str] = (), service: str | None = None,
        restart: str = "never", outputs: Sequence[str] = ()) -> "ExecResult":
    """Boot a throwaway VM from ``image``, run ``argv``, tear it all down, return the result.

    It restores the image's boot snapshot instead of booting when it can
    (docs/snapshots.md); ``cold`` boots regardless.

    ``egress``, ``secrets``, ``secret_hosts``, ``volumes``, ``setup``, ``service``, ``restart``: as for
    :meth:`Workspace.create` (a failing setup command raises ``Permanent`` and the command does not run).
    ``outputs``: ``"HOST_DIR=/guest/path"`` specs copied back after the command (docs/volumes.md).

    :raises Unsupported: a backend or image this host cannot serve.
    :raises NotFound: kernel, guest init or host tool missing.
    :raises MicroagentError: any boot or channel failure (nothing is left behind).
    """
    from microagent.workspace.oneshot import run as run_oneshot

    outcome = run_oneshot(image, _argv(argv), backend=backend, env=_env_list(env), workdir=workdir,
                          user=user, timeout=timeout, memory_mib=memory_mib, cpus=cpus,
                          boot_timeout=boot_timeout, state_dir=state_dir, supervisor=supervisor,
                          stdout=stdout, stderr=stderr,  # type: ignore[arg-type]
                          egress=_egress_policy("isolated", egress, secrets, secret_hosts), cold=cold,
                          volumes=volumes, setup=setup, service=service, restart=restart, outputs=outputs)
    result: ExecResult = outcome.result
    return result



def _egress_policy(network: str, egress: EgressArg, secrets: Sequence[str] = (),
                   secret_hosts: Sequence[str] = ()) -> Any:
    """The checked policy for ``egress=``, ``secrets=`` and ``secret_hosts=``, or ``None``."""
    from microagent.egress.options import policy_from_options

    if egress is None:
        return policy_from_options(network, (), (), False, secrets, secret_hosts)
    if isinstance(egress, Mapping):
        hosts, cidrs = tuple(egress.get("allowHosts") or ()), tuple(egress.get("allowCidrs") or ())
        return policy_from_options(network, hosts, cidrs, not hosts and not cidrs, secrets, secret_hosts)
    if isinstance(egress, str):
        egress = [egress]
    return policy_from_options(network, tuple(egress), (), not egress, secrets, secret_hosts)
