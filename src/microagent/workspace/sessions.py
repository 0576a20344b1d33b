"""Talking to a running workspace's guest: exec, file copy, shells.

This module owns the client side of a named workspace's guest channel: it
checks the workspace is ``running`` (quarantined and stopped workspaces are
refused with :class:`~microagent.errors.Conflict` naming the state), opens a
connection on :func:`~microagent.workspace.channel_path.guest_channel_path`,
and fills run defaults (working directory and user) from the image record.
The per-boot env is applied by guest init itself (config disk), so every
exec and shell sees it. Terminal handling (raw mode, resize, detach key)
belongs to the CLI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from microagent.durations import optional_seconds
from microagent.errors import InvalidRequest, MicroagentError, NotFound, Permanent, ResourceExhausted, Transient
from microagent.paths import runtime_dir, state_root_text, workspace_dir
from microagent.vmkit.basics import is_safe_name
from microagent.workspace.channel_path import CHANNEL_SOCKET, channel_endpoint

# The lifecycle module (and the manifest's dataclasses) load only off exec's
# fast path, which reads just the records it needs (see _running_records).
TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and pathlib cost CLI start-up time; mypy reads this block
    from pathlib import Path
    from types import TracebackType
    from typing import IO, Any

    from microagent.channel import ChannelConnection, ExecRequest, ExecResult, ExecSession, FileStat
    from microagent.channel.exec import OutputSink, StdinSource
    from microagent.workspace.lifecycle import WorkspaceStore
    from microagent.workspace.manifest import Manifest

HELLO_TIMEOUT_S = 10.0
MAX_COMMAND_BYTES = 256 << 10
"""The most a command's argv and env may take (as sent, JSON-encoded): well inside one
1 MiB channel frame, and inside what the guest kernel's execve takes. Larger input
belongs on stdin or in a file."""


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def check_env(env: Sequence[str]) -> tuple[str, ...]:
    """The one check of ``-e`` entries (create, run, exec, SDK); here, not in the
    lifecycle module, so that run and exec check them without loading it.

    :raises InvalidRequest: for an entry that is not ``K=V``.
    """
    for item in env:
        if "=" not in item or item.startswith("="):
            raise InvalidRequest(f"environment entry {item!r} is not K=V",
                                 "pass -e KEY=VALUE (an empty value is KEY=)")
    return tuple(env)


def check_command_size(argv: Sequence[str], env: Mapping[str, str] | Sequence[str] = ()) -> None:
    """Refuse an argv + env too large to send, before anything is sent.

    :raises InvalidRequest: naming the size, the limit and the remedy.
    """
    import json

    items = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env)
    size = len(json.dumps([*map(str, argv), *map(str, items)], ensure_ascii=False).encode())
    if size > MAX_COMMAND_BYTES:
        raise InvalidRequest(f"the command's argv and env are {_size(size)}; the limit is "
                             f"{_size(MAX_COMMAND_BYTES)}",
                             "pass large input on stdin (exec -i) or in a file "
                             "(microagent cp FILE NAME:/path, then read it in the guest)")
DEFAULT_OUTPUT_LIMIT = 16 << 20  # = microagent.channel.limits.DEFAULT_OUTPUT_LIMIT (not imported: CLI import cost)


#: Operations that need a running workspace, the case exec's fast path recognises.
_RUNNING_OPS = frozenset({"exec", "cp", "connect"})


class LazyStore:
    """A state root whose :class:`~microagent.workspace.lifecycle.WorkspaceStore` is built on first use.

    The CLI's ``exec`` passes one to :class:`GuestConnection`: a workspace whose
    records say it runs never needs the store (nor the lifecycle module);
    every other case asks the real store, whose methods this forwards to.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, supervisor: str | None = None) -> None:
        self.root_text = state_root_text(state_dir)  # checked here, as WorkspaceStore checks its root
        self.supervisor = supervisor
        self._store: WorkspaceStore | None = None

    def __getattr__(self, attr: str) -> Any:  # root, manifest, observe, inspect, ...
        if attr.startswith("_"):
            raise AttributeError(attr)
        if self._store is None:
            from microagent.workspace.lifecycle import WorkspaceStore

            self._store = WorkspaceStore(self.root_text, self.supervisor)
        return getattr(self._store, attr)


def _read_object(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _running_records(root: str | Path, name: str) -> tuple[dict[str, Any], str] | None:
    """``(workspace.json, runtime dir)`` when the records say ``name`` runs and its VMM is alive.

    The cheap half of :meth:`WorkspaceStore.observe <microagent.workspace.lifecycle.WorkspaceStore.observe>`
    for the one state exec accepts; anything else (no such workspace, another
    state, a dead VMM, an unreadable record) is None, and the full guard decides.
    """
    from microagent.host.process import ProcessRef, is_alive

    if not is_safe_name(name):
        return None
    rt = runtime_dir(root, name)
    runtime = _read_object(os.path.join(rt, "runtime.json"))
    if runtime is None or runtime.get("state") != "running":
        return None
    pid, start = runtime.get("pid"), runtime.get("starttime")
    if not (isinstance(pid, int) and isinstance(start, int) and is_alive(ProcessRef(pid, start))):
        return None
    doc = _read_object(os.path.join(workspace_dir(root, name), "workspace.json"))  # = manifest.manifest_path
    if doc is None or doc.get("name") != name:
        return None
    return doc, rt


def _run_defaults(doc: dict[str, Any]) -> tuple[str, str]:
    """The image's working directory and user from a ``workspace.json`` document
    (read as :meth:`ImageRecord.from_json <microagent.workspace.manifest.ImageRecord.from_json>` does)."""
    image = doc.get("image")
    cfg = image.get("config") if isinstance(image, dict) else None
    if not isinstance(cfg, dict):
        return "", ""
    return str(cfg.get("workdir") or ""), str(cfg.get("user") or "")


class GuestConnection:
    """An open channel to a running workspace's guest; many sessions can run on it at once.

    Use as a context manager, or call :meth:`close`. Thread-safe: exec,
    put and get may be called concurrently from several threads.

    :param store: the workspace store (the CLI passes a :class:`LazyStore`).
    :param name: the workspace.
    :param operation: what the caller intends (``exec``, ``cp``, ``connect``),
        checked against the state table.
    :raises NotFound: when the workspace does not exist.
    :raises Conflict: unless the workspace is running (naming its state).
    :raises Transient: when the guest channel cannot be reached.

    ``workdir`` and ``user`` hold the image's run defaults (``""``: none).
    """

    def __init__(self, store: WorkspaceStore | LazyStore, name: str, operation: str = "exec") -> None:
        self.store = store
        self.name = name
        self._manifest: Manifest | None = None
        root = store.root_text if isinstance(store, LazyStore) else store.root
        fast = _running_records(root, name) if operation in _RUNNING_OPS else None
        if fast is not None:
            doc, rt = fast
            backend = str(doc.get("backend", ""))
            self.workdir, self.user = _run_defaults(doc)
        else:
            self._manifest = store.manifest(name)
            backend = self._manifest.backend
            self.workdir, self.user = self._manifest.image.workdir, self._manifest.image.user
            rt = self._check_state(operation)
        try:
            self.conn: ChannelConnection = _connect(rt, name)
        except Transient:
            # The channel helper may have died while the VM runs: the supervisor's
            # inspect starts a new one (the guest resets its sessions); try once more.
            store.inspect(name, backend)
            self.conn = _connect(rt, name)

    def _check_state(self, operation: str) -> str | Path:
        """The full guard (exec's fast path found the records not plainly running); the runtime dir."""
        from microagent.runtime_state import locate_runtime_dir
        from microagent.workspace.state import WorkspaceState, require_state

        observed = self.store.observe(self.name, self.manifest.backend)
        if observed.state is WorkspaceState.PAUSED and (observed.runtime or {}).get("pausedReason"):
            # the VMM paused it: a full host disk
            raise ResourceExhausted(f"workspace {self.name} is {observed.detail or 'paused'}",
                                    f"free space on the host disk, then 'microagent resume {self.name}'")
        require_state(operation, self.name, observed.state)
        return locate_runtime_dir(self.store.root, self.name)

    @property
    def manifest(self) -> Manifest:
        """The workspace's manifest (read on first use: exec's fast path needs only the run defaults)."""
        if self._manifest is None:
            self._manifest = self.store.manifest(self.name)
        return self._manifest

    def __enter__(self) -> "GuestConnection":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------ exec

    def request(self, argv: Sequence[str], *, env: Mapping[str, str] | Sequence[str] = (),
                workdir: str | None = None, user: str | None = None, timeout: float | None = None,
                stdin: "StdinSource" = None, pty: bool = False, rows: int = 24, cols: int = 80,
                term: str | None = None, stdout_limit: int = 0, stderr_limit: int = 0) -> "ExecRequest":
        """An :class:`~microagent.channel.ExecRequest` with the image's defaults filled in.

        :param stdout_limit: keep at most this many stdout bytes (0 = all).
        :param stderr_limit: keep at most this many stderr bytes (0 = all).
        :raises InvalidRequest: for an empty argv or a malformed env entry.
        """
        from microagent.channel import ExecRequest

        if not argv:
            raise InvalidRequest("no command given", "put the command after --, e.g. exec NAME -- uname -a")
        check_command_size(argv, env)
        timeout = optional_seconds(timeout, "timeout")
        req = ExecRequest(argv=list(argv), env=env, cwd=workdir or self.workdir or None,
                          user=user or self.user or None, stdin=stdin, pty=pty,
                          rows=rows, cols=cols, timeout_s=timeout or None,
                          stdout_limit=stdout_limit, stderr_limit=stderr_limit)
        if term:
            req.term = term
        req.env_list()
        return req

    def start_exec(self, request: "ExecRequest", *, stdout: "OutputSink | None" = None,
                   stderr: "OutputSink | None" = None, kind: str = "exec") -> "ExecSession":
        """Start a command with streaming output (``None`` sinks collect)."""
        from microagent.channel.exec import start

        return start(self.conn, request, stdout=stdout, stderr=stderr, kind=kind)

    def exec(self, argv: Sequence[str], *, env: Mapping[str, str] | Sequence[str] = (),
             workdir: str | None = None, user: str | None = None, timeout: float | None = None,
             stdin: "StdinSource" = None, stdout: "OutputSink | None" = None,
             stderr: "OutputSink | None" = None,
             output_limit: int | None = DEFAULT_OUTPUT_LIMIT) -> "ExecResult":
        """Run a command to completion.

        A command that cannot start is a result (``failed_to_start``, 126/127),
        one that runs out of ``timeout`` is ``timed_out`` (124).

        :param output_limit: bytes kept of each stream collected in the
            result (the rest is dropped, ``*_truncated`` says so); streams
            given a sink are not limited; ``None`` or 0 keeps everything.
        :raises InvalidRequest: for an empty argv or a malformed env entry.
        :raises ChannelClosed: when the guest went away mid-command.
        :raises ChannelTimeout: when the guest does not start the command, or
            does not end it after ``timeout``, in time (a silent guest).
        """
        limit = output_limit or 0
        req = self.request(argv, env=env, workdir=workdir, user=user, timeout=timeout, stdin=stdin,
                           stdout_limit=limit if stdout is None else 0,
                           stderr_limit=limit if stderr is None else 0)
        return self.start_exec(req, stdout=stdout, stderr=stderr).wait()

    # ------------------------------------------------------------ files

    def put(self, guest_path: str, source: bytes | str | os.PathLike[str] | IO[bytes], *,
            mode: int | None = None, mkdirs: bool = False, idle_timeout: float | None = 60.0) -> int:
        """Write a guest file from bytes, a local path or a binary file; returns bytes written.

        :param mode: permission bits (default: the local file's, else 0644).
        :param idle_timeout: seconds the guest may make no progress before
            the copy fails with ``ChannelTimeout`` (``None``: wait forever).
        :raises NotFound: when a local source path is missing.
        :raises GuestError: when the guest refused (e.g. missing parent directory).
        """
        from microagent.channel.files import put

        if mode is None:
            mode = 0o644
            if isinstance(source, (str, os.PathLike)):
                try:
                    mode = os.stat(source).st_mode & 0o7777
                except FileNotFoundError:
                    raise NotFound(f"local file {os.fspath(source)} does not exist") from None
        idle_timeout = optional_seconds(idle_timeout, "idle_timeout")
        return put(self.conn, guest_path, source, mode=mode, mkdirs=mkdirs, idle_timeout=idle_timeout)

    def get(self, guest_path: str, dest: str | os.PathLike[str] | None = None, *,
            max_bytes: int | None = DEFAULT_OUTPUT_LIMIT, idle_timeout: float | None = 60.0) -> "bytes | FileStat":
        """Read a guest file: its bytes when ``dest`` is ``None``, else copy it to ``dest``.

        The local copy gets the guest file's ``rwx`` bits less the umask
        (never setuid, setgid or sticky); a symlink at ``dest`` is replaced.

        :param max_bytes: without ``dest``, refuse files larger than this
            (``ResourceExhausted``); ``None`` = no limit.
        :param idle_timeout: seconds the guest may send nothing before the
            copy fails with ``ChannelTimeout`` (``None``: wait forever).
        :raises GuestError: e.g. ``GuestNotFound``, or code ``is_directory``.
        """
        from microagent.channel.files import get, get_bytes

        idle_timeout = optional_seconds(idle_timeout, "idle_timeout")
        if dest is None:
            return get_bytes(self.conn, guest_path, max_bytes=max_bytes, idle_timeout=idle_timeout)
        return get(self.conn, guest_path, dest, idle_timeout=idle_timeout)

    # ------------------------------------------------------------ shells

    def user_shell(self, user: str | None = None) -> str:
        """The login shell of ``user`` (default the image's user, else root) from the
        guest's ``/etc/passwd``; ``/bin/sh`` when it cannot be told."""
        from microagent.channel import GuestError

        who = user or self.user or "root"
        try:
            passwd = self.get("/etc/passwd", max_bytes=1 << 20)
        except (GuestError, ResourceExhausted):
            return "/bin/sh"
        assert isinstance(passwd, bytes)
        for line in passwd.decode("utf-8", "replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 7 and (fields[0] == who or fields[2] == who.split(":")[0]):
                return fields[6] or "/bin/sh"
        return "/bin/sh"

    def open_shell(self, *, rows: int = 24, cols: int = 80, term: str = "xterm-256color",
                   user: str | None = None, output: "OutputSink | None" = None) -> "ExecSession":
        """An interactive login shell on a new guest pty (write to it, resize, close to detach)."""
        from microagent.channel import open_shell

        return open_shell(self.conn, rows=rows, cols=cols, term=term,
                          user=user or self.user or None, cwd=self.workdir or None, output=output)

    def send_line(self, line: str, *, timeout: float | None = None, user: str | None = None,
                  output: "OutputSink | None" = None, rows: int = 24, cols: int = 200) -> "ExecResult":
        """Run one line in the user's shell on a pty (``<shell> -c LINE``), like typing it.

        Terminal output has ``\\r\\n`` turned back into ``\\n``.

        :param timeout: seconds; the guest kills the line's process group at
            the deadline and the result is ``timed_out`` (124).
        """
        from microagent.channel import ChannelTimeout, ExecRequest, ExecResult

        shell = self.user_shell(user)
        timeout = optional_seconds(timeout, "timeout")
        check_command_size([shell, "-c", line])
        req = ExecRequest(argv=[shell, "-c", line], stdin=True, pty=True, rows=rows, cols=cols,
                          user=user or self.user or None, cwd=self.workdir or None, timeout_s=timeout or None,
                          stdout_limit=DEFAULT_OUTPUT_LIMIT if output is None else 0)
        collected = bytearray()
        sink = CRLFToLF(output if output is not None else collected.extend)
        handle = self.start_exec(req, stdout=sink, kind="shell")
        try:
            result = handle.wait(None if timeout is None else timeout + 10.0)
        except ChannelTimeout:
            handle.close()
            return ExecResult(status="timed_out", exit_code=124, signal=9, stdout=bytes(collected))
        sink.flush_pending()
        if output is None:
            result.stdout = bytes(collected)
        return result


GuestSession = GuestConnection
"""Deprecated: the old name of :class:`GuestConnection` (it is a connection, not a session)."""


class CRLFToLF:
    """An output sink filter that turns a terminal's ``\\r\\n`` into ``\\n`` (chunk-safe)."""

    def __init__(self, sink: Any) -> None:
        write = getattr(sink, "write", None)
        self._write = write if write is not None else sink
        self._flush = getattr(sink, "flush", None)
        self._cr = False

    def __call__(self, data: bytes) -> None:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr = True
        data = data.replace(b"\r\n", b"\n")
        if data:
            self._write(data)
            if self._flush is not None:
                self._flush()

    def flush_pending(self) -> None:
        if self._cr:
            self._cr = False
            self._write(b"\r")


def _connect(rt: str | Path, name: str) -> "ChannelConnection":
    from microagent.channel import ChannelTimeout, open_channel

    path = channel_endpoint(rt)
    try:
        return open_channel(path, hello_timeout=HELLO_TIMEOUT_S, name=f"workspace {name}")
    except ChannelTimeout as exc:
        hint = ("the single-client channel socket is probably held by another microagent command; "
                "retry when it finished" if os.path.basename(path) == CHANNEL_SOCKET
                else "check 'microagent status " + name + "'")
        raise Transient(f"workspace {name} did not answer on its channel within {HELLO_TIMEOUT_S:g}s", hint) from exc
    except MicroagentError as exc:
        raise Transient(f"cannot reach the guest channel of workspace {name}: {exc.message}",
                        f"check 'microagent status {name}' and 'microagent logs {name}'") from exc


# ------------------------------------------------------------ cp


def parse_cp_arg(arg: str) -> tuple[str | None, str]:
    """``NAME:/abs/path`` → ``(NAME, path)``; anything else is a local path ``(None, arg)``.

    :raises InvalidRequest: for ``NAME:relative`` paths.
    """
    name, sep, path = arg.partition(":")
    if sep and is_safe_name(name) and "/" not in name:
        if not path.startswith("/"):
            raise InvalidRequest(f"guest path {path!r} in {arg!r} is not absolute",
                                 f"write it as {name}:/absolute/path")
        return name, path
    return None, arg


def check_cp_args(src: str, dst: str) -> tuple[tuple[str | None, str], tuple[str | None, str]]:
    """Both sides of a ``cp`` parsed.

    :raises InvalidRequest: for a relative guest path, or unless exactly one side names a workspace.
    """
    src_side, dst_side = parse_cp_arg(src), parse_cp_arg(dst)
    if (src_side[0] is None) == (dst_side[0] is None):
        raise InvalidRequest("cp needs exactly one side written as NAME:/path",
                             "e.g. microagent cp ./file.txt ws1:/tmp/file.txt")
    return src_side, dst_side


def copy(store: WorkspaceStore, src: str, dst: str) -> dict[str, Any]:
    """``cp SRC DST`` with ``NAME:/path`` on exactly one side; regular files only.

    A guest destination ending in ``/`` and a local destination that is a
    directory get the source's basename appended.

    :raises InvalidRequest: when neither or both sides name a workspace.
    :raises NotFound: for a missing local source or guest file.
    :raises Conflict: unless the workspace is running.
    """
    from pathlib import Path

    (src_ws, src_path), (dst_ws, dst_path) = check_cp_args(src, dst)
    if dst_ws is not None:
        local = Path(src_path)
        if not local.exists():
            raise NotFound(f"local file {local} does not exist")
        if not local.is_file():
            raise Permanent(f"{local} is not a regular file; cp copies single files", "archive it first (tar)")
        if dst_path.endswith("/"):
            dst_path += local.name
        with GuestConnection(store, dst_ws, "cp") as gs:
            n = gs.put(dst_path, local)
        return {"direction": "in", "workspace": dst_ws, "source": str(local), "destination": dst_path, "bytes": n}
    assert src_ws is not None
    local = Path(dst_path)
    if local.is_dir():
        local = local / (Path(src_path).name or "file")
    with GuestConnection(store, src_ws, "cp") as gs:
        stat = gs.get(src_path, local)
    return {"direction": "out", "workspace": src_ws, "source": src_path, "destination": str(local),
            "bytes": getattr(stat, "bytes", 0)}
