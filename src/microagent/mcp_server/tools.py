"""The tools: the workspace lifecycle (snapshots and forks too), exec and files, one-shot runs.

Every tool is async and runs the (blocking) library call in a worker thread,
so progress notifications and other requests keep flowing meanwhile. The
annotations are truthful: a tool that can lose data (exec, write, halt,
delete) is destructive; the readers are read-only.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field

from microagent.errors import InvalidRequest, Permanent
from microagent.mcp_server import results as r
from microagent.mcp_server.capture import CappedSink, exec_outcome, outcome
from microagent.mcp_server.errors import as_tool_errors
from microagent.mcp_server.ledger import Ledger
from microagent.mcp_server.options import CREATED_BY, MAX_OUTPUT_LIMIT, ServerOptions
from microagent.mcp_server.progress import Progress
from microagent.workspace.lifecycle import DEFAULT_IMAGE, WorkspaceStore

T = TypeVar("T")

INSTRUCTIONS = """\
microagent runs each workspace as its own Linux microVM (own kernel, own disk).
Typical flow: workspace_create (boots it), then workspace_exec / workspace_write_file /
workspace_read_file, and workspace_delete when done. `run` is a throwaway VM for one command.
workspace_snapshot saves a running workspace; workspace_fork starts new ones from the snapshot.
Errors carry a JSON object {kind, message, remediation}: follow the remediation.
A command's non-zero exit code is a result, not an error."""

Name = Annotated[str, Field(description="workspace name: 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit")]
Command = Annotated[list[str] | str, Field(
    description="argv list (run directly), or one string run through /bin/sh -c")]
Env = Annotated[dict[str, str] | None, Field(description="extra environment variables")]
Network = Annotated[Literal["isolated", "user", "nat"], Field(
    description="isolated: no network (default); user/nat: public internet only")]
Timeout = Annotated[float | None, Field(
    description="seconds before the command is killed (exit 124); default: the server's exec timeout", gt=0)]
OutputLimit = Annotated[int | None, Field(
    description="bytes kept per output stream; default: the server's output limit", ge=1, le=MAX_OUTPUT_LIMIT)]


def _readonly(title: str) -> ToolAnnotations:
    return ToolAnnotations(title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                           open_world_hint=False)


def _changes(title: str, *, destructive: bool, idempotent: bool = False, open_world: bool = False) -> ToolAnnotations:
    return ToolAnnotations(title=title, read_only_hint=False, destructive_hint=destructive,
                           idempotent_hint=idempotent, open_world_hint=open_world)


async def _call(fn: Callable[[], T]) -> T:
    """A blocking library call in a worker thread, its errors as tool errors."""
    with as_tool_errors():
        return await anyio.to_thread.run_sync(fn)


def _stdin(stdin: str | None, stdin_base64: str | None) -> bytes | None:
    if stdin is not None and stdin_base64 is not None:
        raise Permanent("give stdin or stdin_base64, not both", "text goes in stdin, binary data in stdin_base64")
    if stdin_base64 is not None:
        return _b64(stdin_base64, "stdin_base64")
    return stdin.encode() if stdin is not None else None


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Permanent(f"{what} is not valid base64", "encode the bytes with standard base64 (RFC 4648)") from None


def _argv(command: list[str] | str) -> list[str]:
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)


def _named_volumes(specs: list[str]) -> list[str]:
    """``-v`` specs of named volumes only: a host folder would hand the agent any file the
    server's user can read (docs/mcp.md)."""
    from microagent.workspace.volumes import parse_mount_specs

    with as_tool_errors():
        for mount in parse_mount_specs(specs):
            if mount.is_folder:
                raise InvalidRequest(f"host folder {mount.source} cannot be attached through MCP",
                                "attach a named volume (microagent volume create NAME), or create the "
                                "workspace with the CLI: microagent create NAME -v /host/dir:/guest/path")
    return specs


def _env(env: dict[str, str] | None) -> list[str]:
    return [f"{k}={v}" for k, v in (env or {}).items()]


def build_server(options: ServerOptions | None = None) -> tuple[MCPServer, Ledger]:
    """An MCP server whose tools act on the workspaces under ``options.state_dir``, and the
    ledger of the workspaces it creates (what ``--cleanup`` removes)."""
    from importlib.metadata import version

    options = options or ServerOptions()
    store = WorkspaceStore(options.state_dir, options.supervisor)
    ledger = Ledger(store, options.max_workspaces)
    server = MCPServer("microagent", version=version("microagent"), instructions=INSTRUCTIONS, log_level="WARNING")

    def limit(requested: int | None) -> int:
        return requested or options.output_limit

    # ------------------------------------------------------------ one-shot

    @server.tool(annotations=_changes("Run a command in a throwaway VM", destructive=False, open_world=True))
    async def run(command: Command, ctx: Context, image: str = DEFAULT_IMAGE, env: Env = None,
                  timeout: Timeout = None, network: Network = "isolated",
                  output_limit: OutputLimit = None) -> r.RunOutcome:
        """Boot a throwaway VM from `image`, run `command`, tear the VM down, return the result.

        `image` is builtin:busybox (default, no network needed), an OCI reference such as
        docker.io/library/alpine:3.20, or oci-layout:PATH. Nothing is left behind."""
        from microagent.workspace.oneshot import run as run_oneshot

        progress = Progress(ctx)
        out, err = CappedSink(limit(output_limit)), CappedSink(limit(output_limit))

        def go() -> Any:
            return run_oneshot(image, _argv(command), backend=options.backend, env=_env(env),
                               timeout=timeout or options.exec_timeout, state_dir=options.state_dir,
                               supervisor=options.supervisor, stdout=out, stderr=err, network=network,
                               progress=progress.pull(0, 50))

        with as_tool_errors(), ledger.running():
            done = await progress.phase(0, 95, "booting and running", go)
        await progress.report(100, "done")
        return r.RunOutcome(backend=done.backend, **outcome(done.result, out, err))

    # ------------------------------------------------------------ lifecycle

    @server.tool(annotations=_changes("Create a workspace", destructive=False, open_world=True))
    async def workspace_create(
            name: Name, ctx: Context, image: str = DEFAULT_IMAGE,
            profile: Annotated[Literal["tiny", "small", "medium", "large"] | None,
                               Field(description="size preset (default small)")] = None,
            memory_mib: Annotated[int | None, Field(description="override the profile's memory", ge=1)] = None,
            cpus: Annotated[int | None, Field(description="override the profile's vCPUs", ge=1)] = None,
            disk_size_mib: Annotated[int | None, Field(description="root disk size", ge=1)] = None,
            env: Env = None, network: Network = "isolated",
            allow_host_loopback: Annotated[bool, Field(description="let the guest reach the host's loopback")] = False,
            start: Annotated[bool, Field(description="boot it now (false: leave it prepared)")] = True,
            boot_timeout: Annotated[float, Field(description="seconds the guest may take to come up", gt=0)] = 60.0,
            volumes: Annotated[list[str] | None, Field(
                description='named volumes to attach, "VOLUME:/guest/path" or "VOLUME:/guest/path:ro" '
                            "(created with 'microagent volume create'; host folders are not offered here)",
                max_length=16)] = None,
            setup: Annotated[list[str] | None, Field(
                description="shell commands run once, in order, at the first boot; a failing one leaves the "
                            "workspace failed", max_length=64)] = None,
            service: Annotated[str | None, Field(
                description="a long-running shell command guest init starts at every boot (e.g. a dev server)")] = None,
            restart: Annotated[Literal["never", "on-failure", "always"], Field(
                description="restart the service when it exits (backoff 1 s doubling to 30 s)")] = "never",
    ) -> r.Created:
        """Create a named workspace (its own disk from `image`) and, unless start=false, boot it.

        It persists until workspace_delete. Counts against this server's workspace cap."""
        progress = Progress(ctx)
        mounts = _named_volumes(volumes or [])

        def create() -> Any:
            return store.create(name, image=image, profile=profile, memory_mib=memory_mib, cpus=cpus,
                                disk_size_mib=disk_size_mib, env=_env(env), network=network,
                                allow_host_loopback=allow_host_loopback, backend=options.backend,
                                created_by=CREATED_BY, progress=progress.pull(0, 40), volumes=mounts,
                                setup=setup or (), service=service, restart=restart)

        with as_tool_errors(), ledger.creating(name):
            manifest = await progress.phase(0, 50, "creating disk", create)
            state = "prepared"
            if start:
                done = await progress.phase(50, 99, "booting", lambda: store.start(name, boot_timeout=boot_timeout))
                state = done.state.value
        await progress.report(100, "done")
        return r.Created(name=name, state=state, image=manifest.image.ref, backend=manifest.backend,
                         resources=manifest.resources, network=manifest.network, createdBy=CREATED_BY)

    @server.tool(annotations=_changes("Boot a workspace", destructive=False))
    async def workspace_start(name: Name, ctx: Context,
                              boot_timeout: Annotated[float, Field(gt=0, description="seconds to come up")] = 60.0,
                              ) -> r.Transition:
        """Boot a prepared, halted, stopped or failed workspace; returns when it is ready for exec."""
        progress = Progress(ctx)
        with as_tool_errors():
            done = await progress.phase(0, 99, "booting", lambda: store.start(name, boot_timeout=boot_timeout))
        await progress.report(100, "done")
        return r.Transition(**_transition(done.to_json()))

    @server.tool(annotations=_changes("Snapshot a workspace", destructive=False))
    async def workspace_snapshot(
            name: Name, tag: Annotated[str, Field(description="the snapshot's name, unique per workspace")],
            ctx: Context) -> r.Snapshot:
        """Save a running (or paused) workspace's disk and memory as snapshot `tag`; it keeps running.

        workspace_fork starts new workspaces from it."""
        progress = Progress(ctx)
        with as_tool_errors():
            snap = await progress.phase(0, 99, "saving", lambda: store.snapshot(name, tag))
        await progress.report(100, "done")
        return r.Snapshot(**{k: snap.get(k) for k in r.Snapshot.model_fields})

    @server.tool(annotations=_changes("Fork a workspace from a snapshot", destructive=False))
    async def workspace_fork(
            name: Annotated[str, Field(description="the new workspace's name")],
            source: Annotated[str, Field(description="the snapshot to start from: WORKSPACE:TAG")],
            ctx: Context,
            boot_timeout: Annotated[float, Field(gt=0, description="seconds to come up")] = 60.0,
    ) -> r.Transition:
        """A new running workspace from a snapshot: a copy of its disk, its memory as it was (processes
        included), a fresh clock, entropy and hostname. Counts against this server's workspace cap."""
        progress = Progress(ctx)
        with as_tool_errors(), ledger.creating(name):
            done = await progress.phase(0, 99, "restoring", lambda: store.fork(
                name, source, boot_timeout=boot_timeout, created_by=CREATED_BY))
        await progress.report(100, "done")
        return r.Transition(**_transition(done.to_json()))

    @server.tool(annotations=_readonly("List workspaces"))
    async def workspace_list(
            running_only: Annotated[bool, Field(description="only those whose VM runs")] = False,
    ) -> r.WorkspaceList:
        """Every workspace with its state; createdBy is "mcp" for those an MCP server created."""
        rows = await _call(lambda: store.list(running_only=running_only))
        return r.WorkspaceList(workspaces=[r.WorkspaceRow(**row) for row in rows])

    @server.tool(annotations=_readonly("Workspace status"))
    async def workspace_status(name: Name) -> r.Status:
        """State, readiness, resources, network and the verification of kernel, disk and guest init."""
        from microagent.workspace.status import workspace_status as status_document

        doc = await _call(lambda: status_document(store, name))
        return r.Status(name=name, state=str(doc.get("state", "")), document=doc)

    @server.tool(annotations=_changes("Halt a workspace", destructive=True))
    async def workspace_halt(name: Name) -> r.Transition:
        """Shut the guest down cleanly (disk flushed; processes end). workspace_start boots it again."""
        done = await _call(lambda: store.halt(name))
        return r.Transition(**_transition(done.to_json()))

    @server.tool(annotations=_changes("Delete a workspace", destructive=True, idempotent=True))
    async def workspace_delete(
            name: Name,
            force: Annotated[bool, Field(description="kill a running VM first")] = True,
    ) -> r.Deleted:
        """Delete the workspace, its disk and its state. With force (default) a running VM is killed first."""
        out = await _call(lambda: store.delete(name, force=force))
        return r.Deleted(name=name, deleted=bool(out.get("deleted")), killed=bool(out.get("killed")))

    @server.tool(annotations=_readonly("Guest console log"))
    async def workspace_logs(name: Name, max_bytes: OutputLimit = None) -> r.Logs:
        """The end of the guest's serial console (kernel and init messages)."""
        cap = limit(max_bytes)

        def tail() -> tuple[bytes, bool]:
            chunks = store.logs(name, max_bytes=cap)
            data = next(iter(chunks), b"")
            size = store.runtime_path(name).joinpath("serial.log")
            return data, size.is_file() and size.stat().st_size > len(data)

        data, cut = await _call(tail)
        return r.Logs(text=data.decode("utf-8", "replace"), bytes=len(data), truncated=cut)

    # ------------------------------------------------------------ guest

    def guest(name: str) -> Any:
        from microagent.workspace.sessions import GuestConnection

        return GuestConnection(store, name, "exec")

    @server.tool(annotations=_changes("Run a command in a workspace", destructive=True, open_world=True))
    async def workspace_exec(
            name: Name, command: Command, env: Env = None,
            cwd: Annotated[str | None, Field(description="working directory in the guest")] = None,
            user: Annotated[str | None, Field(description="guest user (default: the image's)")] = None,
            stdin: Annotated[str | None, Field(description="text fed to the command's stdin")] = None,
            stdin_base64: Annotated[str | None, Field(description="binary stdin, base64")] = None,
            timeout: Timeout = None, output_limit: OutputLimit = None,
    ) -> r.ExecOutcome:
        """Run a command in a running workspace and wait for it.

        A non-zero exit is a result (exit_code), not an error; status timed_out means the
        timeout killed it. Output beyond output_limit is dropped (truncated=true, bytes counts all)."""
        out, err = CappedSink(limit(output_limit)), CappedSink(limit(output_limit))

        def go() -> Any:
            data = _stdin(stdin, stdin_base64)
            with guest(name) as conn:
                return conn.exec(_argv(command), env=_env(env), workdir=cwd, user=user,
                                 timeout=timeout or options.exec_timeout, stdin=data,
                                 stdout=out, stderr=err, output_limit=None)

        return exec_outcome(await _call(go), out, err)

    @server.tool(annotations=_readonly("Read a file from a workspace"))
    async def workspace_read_file(
            name: Name, path: Annotated[str, Field(description="absolute path in the guest")],
            max_bytes: Annotated[int | None, Field(
                description="refuse a larger file; default: the server's output limit",
                ge=1, le=MAX_OUTPUT_LIMIT)] = None,
    ) -> r.FileContent:
        """A guest file's content: UTF-8 text when it is, else base64 (encoding says which)."""
        def go() -> bytes:
            with guest(name) as conn:
                return bytes(conn.get(path, max_bytes=limit(max_bytes)))

        return r.file_content(path, await _call(go))

    @server.tool(annotations=_changes("Write a file in a workspace", destructive=True, idempotent=True))
    async def workspace_write_file(
            name: Name, path: Annotated[str, Field(description="absolute path in the guest")],
            content: Annotated[str, Field(description="the file's content (text, or base64 with encoding=base64)")],
            encoding: Literal["utf-8", "base64"] = "utf-8",
            mode: Annotated[int | None, Field(description="permission bits, e.g. 493 for 0o755 (default 0o644)",
                                              ge=0, le=0o7777)] = None,
            mkdirs: Annotated[bool, Field(description="create missing parent directories")] = False,
    ) -> r.Written:
        """Create or replace a guest file."""
        def go() -> int:
            from microagent.channel.errors import GuestNotFound

            data = _b64(content, "content") if encoding == "base64" else content.encode()
            with guest(name) as conn:
                try:
                    return int(conn.put(path, data, mode=mode, mkdirs=mkdirs))
                except GuestNotFound as exc:
                    exc.remediation = exc.remediation or "check the path, or pass mkdirs=true to create its parents"
                    raise

        return r.Written(path=path, bytes_written=await _call(go))

    return server, ledger


def _transition(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: doc[k] for k in ("name", "operation", "previousState", "state", "detail", "pid") if k in doc}
