"""Named workspaces: create, start, halt, stop, kill, quarantine, delete, and watching them.

This module owns the lifecycle of a named workspace on top of the
supervisor contract (docs/supervisor-api.md): it validates names and
inputs, takes the per-workspace lock (:mod:`.lock`) around every mutating
command, reconciles the recorded state with the process table through the
supervisor's ``inspect`` before acting, checks the transition against the
table in :mod:`.state`, and then sends the supervisor command. What a
workspace *is* lives in :mod:`.manifest`; talking to the guest is
:mod:`.sessions`.

Reconciliation: mutating commands and ``status`` always ask the supervisor
(``inspect``). ``list``, ``wait`` and the exec/cp/connect guard read the
recorded runtime state and check the recorded VMM process themselves, and
fall back to ``inspect`` whenever the record claims a live VM whose process
is gone, so a dead VMM is never reported as running.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from microagent.durations import optional_seconds, seconds
from microagent.errors import Conflict, InvalidRequest, MicroagentError, NotFound, Unsupported
from microagent.paths import state_root, workspace_dir
from microagent.vmkit.basics import is_safe_name, now_rfc3339
from microagent.waiting import wait_until
from microagent.workspace.lock import WorkspaceLock
from microagent.workspace.manifest import (
    FileDigest,
    ImageRecord,
    Manifest,
    Verification,
    list_manifests,
    load_manifest,
    manifest_path,
    save_manifest,
)
from microagent.workspace.sessions import check_env  # noqa: F401 - the one check of -e entries, re-exported
from microagent.workspace.state import ACTIVE_STATES, LIVE_STATES, WorkspaceState, require_state

# Heavy modules (wire types, snapshots, networking) are imported by the methods
# that use them: exec checks state through this module and must start fast.
if TYPE_CHECKING:
    from microagent.egress.policy import EgressPolicy
    from microagent.images.blobs import PullProgress
    from microagent.vmkit.types import Config
    from microagent.workspace.supervisor_client import SupervisorClient

DEFAULT_IMAGE = "builtin:busybox"
DEFAULT_BOOT_TIMEOUT_S = 60.0
#: ``logs`` reads at most this much of the end of serial.log unless asked for more.
DEFAULT_LOG_TAIL_BYTES = 1024 * 1024


def check_name(name: str) -> str:
    """:raises InvalidRequest: unless ``name`` is a safe basename."""
    if not isinstance(name, str) or not is_safe_name(name):
        raise InvalidRequest(
            f"workspace name {name!r} is not a safe name",
            "use 1-63 characters from A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    return name


@dataclass
class Observed:
    """A workspace's state as reconciled with the process table."""

    name: str
    state: WorkspaceState
    alive: bool = False
    pid: int | None = None
    detail: str = ""
    observedAt: str = ""
    runtime: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state.value, "alive": self.alive, "pid": self.pid,
                "detail": self.detail, "observedAt": self.observedAt}


@dataclass
class Transition:
    """What a lifecycle command did."""

    name: str
    operation: str
    previous: WorkspaceState
    state: WorkspaceState
    detail: str = ""
    pid: int | None = None
    readiness: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "operation": self.operation,
                               "previousState": self.previous.value, "state": self.state.value,
                               "detail": self.detail, "pid": self.pid}
        if self.readiness is not None:
            out["readiness"] = self.readiness
        if self.runtime is not None:
            out["runtime"] = self.runtime
        return out


class WorkspaceStore:
    """All named workspaces under one state root.

    :param state_dir: the state root (``None``: ``MICROAGENT_STATE_DIR`` or ``~/.microagent``).
    :param supervisor: explicit supervisor executable (``--supervisor``).
    :param lock_timeout: seconds a mutating command waits for another one on
        the same workspace (``None``: ``MICROAGENT_LOCK_TIMEOUT`` or 60).
    """

    def __init__(self, state_dir: str | Path | None = None, supervisor: str | None = None,
                 lock_timeout: float | None = None) -> None:
        self.root = state_root(state_dir)
        self.supervisor = supervisor
        self.lock_timeout = lock_timeout

    # ------------------------------------------------------------ plumbing

    def client(self, backend: str) -> SupervisorClient:
        from microagent.workspace.supervisor_client import SupervisorClient

        return SupervisorClient(backend, self.root, self.supervisor)

    def lock(self, name: str, command: str) -> WorkspaceLock:
        return WorkspaceLock(self.root, name, command, self.lock_timeout)

    def manifest(self, name: str) -> Manifest:
        """:raises NotFound: for an unknown workspace. :raises InvalidRequest: for an unsafe name."""
        return load_manifest(self.root, check_name(name))

    def exists(self, name: str) -> bool:
        return manifest_path(self.root, check_name(name)).is_file()

    def disk_path(self, name: str) -> Path:
        return workspace_dir(self.root, name) / "rootfs.ext4"


    def runtime_path(self, name: str) -> Path:
        from microagent.runtime_state import locate_runtime_dir

        return locate_runtime_dir(self.root, name)

    # ------------------------------------------------------------ observing

    def inspect(self, name: str, backend: str | None = None) -> Observed:
        """Ask the supervisor: recorded state reconciled with the process table.

        A workspace with a manifest but no runtime state reads as ``unknown``.

        :raises NotFound: when the workspace does not exist.
        """
        backend = backend or self.manifest(name).backend
        try:
            resp = self.client(backend).send("inspect", name, timeout=60)
        except NotFound:
            return Observed(name, WorkspaceState.UNKNOWN, detail="no runtime state")
        runtime = dict(resp.runtime or {})
        event = resp.event
        return Observed(
            name=name,
            state=WorkspaceState.parse(event.state if event else "unknown"),
            alive=bool(runtime.get("alive")),
            pid=runtime.get("pid") if isinstance(runtime.get("pid"), int) else None,
            detail=event.detail if event else "",
            observedAt=event.observedAt if event else now_rfc3339(),
            runtime=runtime,
        )

    def recorded_state(self, name: str) -> WorkspaceState:
        """The state ``runtime.json`` records, nothing checked (:meth:`observe` reconciles it
        with the VMM): for callers that hold a live connection and only need to know whether
        the workspace was paused or stopped meanwhile."""
        from microagent.runtime_state import read_json

        runtime = read_json(self.runtime_path(name) / "runtime.json")
        return WorkspaceState.parse(runtime.get("state")) if isinstance(runtime, dict) else WorkspaceState.UNKNOWN

    def observe(self, name: str, backend: str | None = None) -> Observed:
        """The cheap reconciliation: read the record, check the VMM process, and
        ask the supervisor only when they disagree (a live state, a dead VMM).

        :raises NotFound: when the workspace does not exist.
        """
        from microagent.host.process import ProcessRef, is_alive
        from microagent.runtime_state import read_json

        rt = self.runtime_path(name)
        runtime = read_json(rt / "runtime.json")
        if not isinstance(runtime, dict):
            if backend is None:
                self.manifest(name)  # NotFound for an unknown workspace
            return Observed(name, WorkspaceState.UNKNOWN, detail="no runtime state")
        state = WorkspaceState.parse(runtime.get("state"))
        pid, start = runtime.get("pid"), runtime.get("starttime")
        alive = isinstance(pid, int) and isinstance(start, int) and is_alive(ProcessRef(pid, start))
        if state in LIVE_STATES and not alive:
            return self.inspect(name, backend)
        event = read_json(rt / "event.json")
        event = event if isinstance(event, dict) else {}
        return Observed(name, state, alive=alive, pid=pid if isinstance(pid, int) else None,
                        detail=str(event.get("detail", "")),
                        observedAt=str(event.get("observedAt", "")), runtime=runtime)

    # ------------------------------------------------------------ create

    def create(self, name: str, *, image: str = DEFAULT_IMAGE, profile: str | None = None,
               memory_mib: int | None = None, cpus: int | None = None, disk_size_mib: int | None = None,
               env: Sequence[str] = (), network: str = "isolated", publish: Sequence[str] = (),
               allow_host_loopback: bool = False, backend: str | None = None, created_by: str = "",
               progress: "PullProgress | None" = None, arch: str | None = None,
               egress: "EgressPolicy | None" = None, setup: Sequence[str] = (), service: str | None = None,
               restart: str = "never", volumes: Sequence[str] = ()) -> Manifest:
        """Build the workspace's disk and manifest and prepare it (state ``prepared``).

        ``arch`` is the guest architecture (default: the host's; QEMU emulates another):
        its kernel, recorded in the manifest, carries it to every later start.

        Nothing is built until every input checked out: name, profile,
        overrides, env, network mode, backend, image reference, kernel, guest init.

        All or nothing: the disk and manifest are built in a staging directory and
        published with one rename, then the supervisor prepares the runtime state;
        a create killed before the rename leaves only a staging dir that the next
        create, ``list`` or ``gc`` removes (see :mod:`.staging`); one killed after it
        leaves a complete workspace whose ``start`` prepares it again.

        :raises InvalidRequest: unsafe name, unknown profile, bad env or range.
        :raises Conflict: when a workspace (or runtime state) of that name exists.
        :raises Unsupported: an image this build cannot serve,
            or a backend of another host OS.
        :raises NotFound: kernel, guest init or host tool missing.

        :param created_by: a tag ``list`` shows (e.g. ``mcp`` for the MCP server's workspaces).
        :param progress: told about an image pull's layers and bytes.
        :param egress: the egress allowlist (:func:`microagent.egress.options.policy_from_options`).
        :param setup: commands run once, in order, at the first start (docs/services.md).
        :param service: a command guest init runs on every boot; ``restart``: never, on-failure, always.
        :param volumes: ``-v`` specs, ``VOLUME:/guest/path[:ro]`` or ``/host/dir:/guest/path[:ro]``
            (docs/volumes.md); a read-write volume is claimed here until the workspace is deleted.
        """
        from microagent.workspace.boot_plan import plan_boot
        from microagent.workspace.services import check_services

        services = check_services(setup, service, restart)
        from microagent.workspace import volumes as vols

        mounts = vols.parse_mount_specs(volumes)

        prof, env, published = self.check_create_input(
            name, profile=profile, memory_mib=memory_mib, cpus=cpus, disk_size_mib=disk_size_mib, env=env,
            network=network, publish=publish, allow_host_loopback=allow_host_loopback)
        plan = plan_boot(image, name, backend=backend, state_dir=self.root,
                         memory_mib=memory_mib or prof.memory_mib, cpus=cpus or prof.cpus,
                         boot_timeout=DEFAULT_BOOT_TIMEOUT_S, arch=arch)
        vols.check_attachable(self.root, mounts, plan.backend, plan.kernel_path)
        lock = self.lock(name, "create")
        with lock:
            try:
                return self._create_locked(name, plan, prof, env, published, image, memory_mib, cpus,
                                           disk_size_mib, network, allow_host_loopback, created_by, progress,
                                           egress=egress.to_wire() if egress is not None else None,
                                           services=services, mounts=mounts)
            except BaseException:
                lock.unlink_on_release = not self.exists(name)  # a failed create leaves no lock file
                raise

    def _create_locked(self, name: str, plan: Any, prof: Any, env: tuple[str, ...], published: tuple[Any, ...],
                       image: str, memory_mib: int | None, cpus: int | None, disk_size_mib: int | None,
                       network: str, allow_host_loopback: bool, created_by: str = "",
                       progress: "PullProgress | None" = None, egress: dict[str, Any] | None = None,
                       services: tuple[tuple[str, ...], str, str] = ((), "", "never"),
                       mounts: tuple[Any, ...] = ()) -> Manifest:
        from microagent.workspace import staging
        from microagent.workspace import volumes as vols
        from microagent.workspace.disk import grow_rootfs, size_mib
        from microagent.workspace.profiles import check_host_fit, resolve_resources

        staging.reap(self.root, name, locked=True)
        self._refuse_clash(name)
        client = self.client(plan.backend)
        client.load()  # now: between the publish below and the supervisor's prepare, no import
        vols.claim(self.root, name, mounts)  # released by delete, or below when this create fails
        # Built out of sight and published with one rename: a create killed at any
        # point leaves a staging dir (reaped later), never a half-made workspace.
        stage = staging.make(self.root, name)
        visible = False
        try:
            disk = self._stage_disk(plan, stage, progress)
            res = resolve_resources(prof, size_mib(plan.image.disk), memory_mib=memory_mib,
                                    cpus=cpus, disk_size_mib=disk_size_mib)
            check_host_fit(None, None, res.diskSizeMiB, self.root)
            grow_rootfs(disk, res.diskSizeMiB)
            img = plan.image
            manifest = Manifest(
                name=name,
                image=ImageRecord(image, img.digest, tuple(img.config.env), img.config.working_dir,
                                  img.config.user, img.config.stop_signal_number()),
                backend=plan.backend, profile=prof.name,
                memoryMiB=res.memoryMiB, cpuCount=res.cpuCount, diskSizeMiB=res.diskSizeMiB,
                createdAt=now_rfc3339(),
                verification=Verification(kernel=FileDigest.of(plan.kernel_path),
                                          rootfsBase=FileDigest.of(img.disk),
                                          init=FileDigest.of(plan.guest_init)),
                env=env, network=network, publish=published, allowHostLoopback=allow_host_loopback,
                egress=egress, createdBy=created_by,
                setup=services[0], service=services[1], restart=services[2],
                volumes=tuple(m.to_spec() for m in mounts),
            )
            save_manifest(self.root, manifest, directory=stage)
            config = self._boot_config(manifest, plan.initrd_path, DEFAULT_BOOT_TIMEOUT_S)
            staging.publish(stage, workspace_dir(self.root, name))
            visible = True
            # Prepared against the published disk, so runtime.json never names the staging
            # dir; a create killed right here leaves a complete workspace that start prepares.
            client.send("prepare", name, config, timeout=120)
        except BaseException:
            if visible:
                self._remove_quietly(client, name)
            staging.remove(stage)
            vols.release(self.root, name)
            raise
        return manifest

    def check_create_input(self, name: str, *, profile: str | None = None, memory_mib: int | None = None,
                           cpus: int | None = None, disk_size_mib: int | None = None, env: Sequence[str] = (),
                           network: str = "isolated", publish: Sequence[str] = (),
                           allow_host_loopback: bool = False) -> tuple[Any, tuple[str, ...], tuple[Any, ...]]:
        """Every check of a create's input that needs no image, kernel or backend.

        :returns: the profile, the env and the parsed port publications.
        :raises InvalidRequest: unsafe name, unknown profile, bad env, a resource
            this host cannot give, bad network mode or publication.
        """
        from microagent.network.publish import check_network, parse_publish
        from microagent.workspace.profiles import check_host_fit, get_profile

        check_name(name)
        prof = get_profile(profile)
        check_host_fit(memory_mib if memory_mib is not None else prof.memory_mib,
                       cpus if cpus is not None else prof.cpus, disk_size_mib, self.root)
        env = check_env(env)
        published = tuple(parse_publish(p) for p in publish)
        check_network(network, published, allow_host_loopback)
        return prof, env, published

    @staticmethod
    def _stage_disk(plan: Any, stage: Path, progress: "PullProgress | None" = None) -> Path:
        """The image's base disk (pulled and built, or cached), copied into ``stage``."""
        from microagent.images.ext4 import copy_disk
        from microagent.images.resolve import resolve_image

        plan.image = resolve_image(plan.image_ref, plan.state_root, plan.guest_init, architecture=plan.arch,
                                   progress=progress)
        return copy_disk(plan.image.disk, stage / plan.disk_path.name)

    def _refuse_clash(self, name: str) -> None:
        if manifest_path(self.root, name).exists():
            try:
                state = self.observe(name).state.value
            except MicroagentError:
                state = "unknown"
            raise Conflict(f"workspace {name} already exists (state {state})",
                           f"pick another name, or delete it first with 'microagent delete -f {name}'")
        for path in (self.runtime_path(name), workspace_dir(self.root, name)):
            if path.exists():
                raise Conflict(f"{path} already exists, so the name {name} is taken",
                               f"pick another name, or remove it with 'microagent delete -f {name}'")

    def _remove_quietly(self, client: SupervisorClient, name: str) -> None:
        try:
            client.send("delete", name, timeout=60)
        except MicroagentError:
            pass
        import shutil

        shutil.rmtree(workspace_dir(self.root, name), ignore_errors=True)

    def _boot_config(self, manifest: Manifest, initrd: Path, boot_timeout: float) -> Config:
        """The supervisor config; the supervisor writes the per-boot config disk from it."""
        from microagent.egress.options import to_config
        from microagent.vmkit.types import Config, Network
        from microagent.workspace.services import service_config
        from microagent.workspace.volumes import parse_mount_specs, vm_devices

        # parsed again at every boot: a host folder that went away is an error, not an empty mount
        disks, shares = vm_devices(self.root, parse_mount_specs(manifest.volumes), backend=manifest.backend,
                                   workspace=manifest.name)
        return Config(
            stateDir=str(self.root),
            kernelPath=manifest.verification.kernel.path,
            rootfsPath=str(self.disk_path(manifest.name)),
            initrdPath=str(initrd),
            memoryMiB=manifest.memoryMiB,
            cpuCount=manifest.cpuCount,
            hostname=manifest.name,
            timeoutSeconds=boot_timeout,
            env=(*manifest.image.env, *manifest.env),
            network=Network(mode=manifest.network, portForwards=manifest.publish,
                            allowHostLoopback=manifest.allowHostLoopback, egress=to_config(manifest.egress)),
            stopSignal=manifest.image.stop_signal,
            service=service_config(manifest),
            disks=disks, shares=shares,
        )

    # ------------------------------------------------------------ start

    def start(self, name: str, *, boot_timeout: float = DEFAULT_BOOT_TIMEOUT_S,
              from_snapshot: str | None = None, cold: bool = False) -> Transition:
        """Boot a prepared, halted, stopped or failed workspace; return once the guest is ready.

        With ``from_snapshot`` (a tag of this workspace) it is restored from that
        snapshot instead (its disk and memory replace the workspace's).  The first
        start of an isolated workspace restores the boot snapshot of its image and
        resources when there is one, or saves it (:mod:`.warm`); ``cold`` boots.

        :raises NotFound: unknown workspace, or its kernel/guest init is gone.
        :raises Conflict: when its state does not allow a start (naming it).
        :raises Transient: when the guest does not come up in time (VM killed).
        :raises Permanent: for a ``boot_timeout`` that is not a finite, non-negative number.
        """
        from microagent.guestinit import find_guest_init
        from microagent.kernels import ensure_initramfs
        from microagent.kernels.vmlinux import kernel_architecture

        boot_timeout = seconds(boot_timeout, "boot_timeout")
        manifest = self.manifest(name)
        kernel = Path(manifest.verification.kernel.path)
        if not kernel.is_file():
            raise NotFound(f"the kernel of workspace {name} ({kernel}) is gone",
                           f"run 'microagent kernel install --backend {manifest.backend}'")
        from microagent.workspace.egress import read_secret_values, supply_secrets

        secret_values = read_secret_values(manifest)  # from their sources, before anything boots
        with self.lock(name, "start"):
            client = self.client(manifest.backend)
            observed = self.inspect(name, manifest.backend)
            if observed.state is WorkspaceState.UNKNOWN:
                # Runtime state lost (crash between steps, manual cleanup): prepare again.
                observed.state = WorkspaceState.PREPARED
            require_state("start", name, observed.state)
            initrd = ensure_initramfs(kernel.parent, find_guest_init(kernel_architecture(kernel)))
            config = self._boot_config(manifest, initrd, boot_timeout)
            restore = None
            if from_snapshot is not None:
                from microagent.workspace import snapshots

                snap = snapshots.load(self.root, name, snapshots.check_tag(from_snapshot))
                snap.verify(manifest, FileDigest.of(kernel).sha256, initrd)
                restore = snap.spec(private=False, generation=snapshots.next_generation(self.root, name))
            if not self.runtime_path(name).exists():
                client.send("prepare", name, config, timeout=120)
            if restore is None and not cold and observed.state is WorkspaceState.PREPARED:
                from microagent.workspace import warm  # a first start: from the boot snapshot

                resp = warm.start_fresh(client, self.root, manifest, config, initrd, self.runtime_path(name),
                                        boot_timeout + 30)
            else:
                resp = client.send("start", name, config, timeout=boot_timeout + 30, snapshot=restore)
            if secret_values:  # to the egress proxy's memory, never a file (docs/egress.md)
                supply_secrets(self.runtime_path(name), name, secret_values)
            if manifest.setup:  # once, after the guest is ready (also after a warm restore)
                from microagent.workspace.services import run_setup

                run_setup(self, manifest, client)
        runtime = dict(resp.runtime or {})
        return Transition(name, "start", observed.state,
                          WorkspaceState.parse(resp.event.state if resp.event else "running"),
                          detail=resp.event.detail if resp.event else "",
                          pid=runtime.get("pid"), readiness=resp.readiness, runtime=runtime)

    # ------------------------------------------------------------ snapshots and forks

    def snapshot(self, name: str, tag: str) -> dict[str, Any]:
        """Save a running or paused workspace as snapshot ``tag``; it stays as it was.

        :raises Conflict: unless running or paused, or when ``tag`` exists.
        """
        from microagent.workspace import snapshots, staging

        snapshots.check_tag(tag)
        manifest = self.manifest(name)
        _refuse_mounts(manifest, "snapshot")
        with self.lock(name, "snapshot"):
            observed = self.inspect(name, manifest.backend)
            if observed.state not in (WorkspaceState.RUNNING, WorkspaceState.PAUSED) or not observed.alive:
                raise Conflict(f"workspace {name} is {observed.state.value}; snapshot needs one of: "
                               "running, paused", f"start it with 'microagent start {name}'",
                               state=observed.state.value, operation="snapshot")
            staged = snapshots.stage(self.root, name, tag)
            try:
                resp = self.client(manifest.backend).send(
                    "snapshot", name, timeout=600, snapshot=snapshots.SnapshotSpec(path=str(staged)))
                from microagent.runtime_state import read_json

                # the boot's config is in the runtime record (inspect answers it only where the VM is a
                # process of ours: not a Hyper-V compute system)
                recorded = read_json(self.runtime_path(name) / "runtime.json") or {}
                runtime_config = observed.runtime.get("config") or recorded.get("config") or {}
                snap = snapshots.publish(staged, manifest, tag, dict(resp.runtime or {}), runtime_config)
            except BaseException:
                staging.remove(staged)
                raise
        return {**snap.summary(), "detail": resp.event.detail if resp.event else ""}

    def snapshots(self, name: str | None = None) -> list[dict[str, Any]]:
        """The snapshots of ``name`` (or of every workspace), oldest first."""
        from microagent.workspace import snapshots

        names = [check_name(name)] if name else [m.name for m in list_manifests(self.root)]
        if name:
            self.manifest(name)  # NotFound for an unknown workspace
        return [snap.summary() for n in names for snap in snapshots.list_snapshots(self.root, n)]

    def remove_snapshot(self, name: str, tag: str) -> dict[str, Any]:
        """:raises NotFound: when ``name`` has no snapshot ``tag``."""
        from microagent.workspace import snapshots

        snapshots.check_tag(tag)
        self.manifest(name)
        with self.lock(name, "snapshot rm"):
            if not snapshots.remove(self.root, name, tag):
                raise NotFound(f"workspace {name} has no snapshot {tag}",
                               f"list them with 'microagent snapshot ls {name}'")
        return {"workspace": name, "tag": tag, "removed": True}

    def fork(self, name: str, source: str, *, boot_timeout: float = DEFAULT_BOOT_TIMEOUT_S,
             created_by: str = "", publish: Sequence[str] = ()) -> Transition:
        """A new workspace ``name`` running from snapshot ``source`` (``WORKSPACE:TAG``): a copy
        of its disk, its memory mapped copy-on-write, a fresh clock, entropy and hostname.
        A networked fork has a network of its own (TAP and lease, or pasta and namespace;
        a new MAC and address in the guest) and only the ports ``publish`` names, not the source's.

        All or nothing: a fork that does not come up is deleted again.
        :raises InvalidRequest: a bad ``publish`` (or any for an isolated snapshot).
        :raises Unsupported: a networked snapshot on a backend that cannot re-address a fork.
        """
        from microagent.guestinit import find_guest_init
        from microagent.images.ext4 import copy_disk
        from microagent.kernels import ensure_initramfs
        from microagent.kernels.vmlinux import kernel_architecture
        from microagent.workspace import snapshots, staging

        boot_timeout = seconds(boot_timeout, "boot_timeout")
        check_name(name)
        src_name, tag = snapshots.parse_source(source)
        src = self.manifest(src_name)
        _refuse_mounts(src, "fork")
        snap = snapshots.load(self.root, src_name, tag)
        snapshots.check_fork_network(src, source)
        published = snapshots.fork_publish(src, publish)
        kernel = Path(src.verification.kernel.path)
        initrd = ensure_initramfs(kernel.parent, find_guest_init(kernel_architecture(kernel)))
        snap.verify(src, FileDigest.of(kernel).sha256, initrd)
        lock = self.lock(name, "create")
        with lock:
            try:
                staging.reap(self.root, name, locked=True)
                self._refuse_clash(name)
                client = self.client(src.backend)
                stage = staging.make(self.root, name)
                try:
                    copy_disk(snap.path / "disk", stage / "rootfs.ext4")
                    manifest = dataclasses.replace(src, name=name, createdAt=now_rfc3339(),
                                                   createdBy=created_by, publish=published)
                    save_manifest(self.root, manifest, directory=stage)
                    if manifest.setup:  # a snapshot is of a running guest: its setup had run
                        from microagent.workspace.services import mark_setup_done

                        mark_setup_done(stage, manifest, f"forked from {source}")
                    staging.publish(stage, workspace_dir(self.root, name))
                except BaseException:
                    staging.remove(stage)
                    raise
                try:
                    config = self._boot_config(manifest, initrd, boot_timeout)
                    client.send("prepare", name, config, timeout=120)
                    resp = client.send("start", name, config, timeout=boot_timeout + 30,
                                       snapshot=snap.spec(private=True, generation=1))
                except BaseException:
                    self._remove_quietly(client, name)
                    raise
            except BaseException:
                lock.unlink_on_release = not self.exists(name)
                raise
        runtime = dict(resp.runtime or {})
        return Transition(name, "create", WorkspaceState.UNKNOWN,
                          WorkspaceState.parse(resp.event.state if resp.event else "running"),
                          detail=f"forked from {source}", pid=runtime.get("pid"), readiness=resp.readiness,
                          runtime=runtime)

    # ------------------------------------------------------------ halt, stop, kill, quarantine

    def _transition(self, name: str, op: str, timeout: float = 120.0) -> Transition:
        manifest = self.manifest(name)
        with self.lock(name, op):
            observed = self.inspect(name, manifest.backend)
            require_state(op, name, observed.state)
            if op in ("stop", "kill") and observed.state is WorkspaceState.FAILED and not observed.alive:
                raise Conflict(f"workspace {name} is failed and its VMM is not running; nothing to {op}",
                               f"start it again, or delete it with 'microagent delete {name}'",
                               state="failed", operation=op)
            try:
                resp = self.client(manifest.backend).send(op, name, timeout=timeout)
            except Conflict as exc:
                raise self._went_down_meanwhile(name, op, manifest.backend, observed) or exc from exc
            if op in ("halt", "stop", "kill") and manifest.volumes:
                from microagent.workspace.volumes import remove_folder_snapshots

                remove_folder_snapshots(self.root, name)  # a firecracker boot's folder copies
        runtime = dict(resp.runtime or {})
        return Transition(name, op, observed.state,
                          WorkspaceState.parse(resp.event.state if resp.event else "unknown"),
                          detail=resp.event.detail if resp.event else "",
                          pid=runtime.get("pid", observed.pid), runtime=runtime or None)

    def _went_down_meanwhile(self, name: str, op: str, backend: str, before: Observed) -> Conflict | None:
        """When the VM ended on its own between our inspect and the supervisor's command
        (a guest poweroff, a crash), say so: the supervisor only saw "not running"."""
        if not before.alive:
            return None
        try:
            now = self.inspect(name, backend)
        except MicroagentError:
            return None
        if now.alive:
            return None
        why = f" ({now.detail})" if now.detail else ""
        return Conflict(f"workspace {name} went down on its own while {op} was starting: its VMM "
                        f"(pid {before.pid}) exited and it is {now.state.value} now{why}; nothing to {op}",
                        f"see why with 'microagent logs {name}'; start it again with 'microagent start {name}'",
                        state=now.state.value, operation=op)

    def halt(self, name: str) -> Transition:
        """Clean shutdown through guest init (disk flushed): ``halted``.

        :raises Conflict: unless running.
        :raises Transient: when the guest did not power off in time (state
            ``failed``, VMM left running: use stop or kill).
        """
        return self._transition(name, "halt")

    def stop(self, name: str) -> Transition:
        """SIGTERM to the VMM, grace period: ``stopped`` (``failed`` if it survives).

        :raises Conflict: when no VMM process is running.
        :raises Transient: when the VMM survived SIGTERM.
        """
        return self._transition(name, "stop")

    def kill(self, name: str) -> Transition:
        """SIGKILL to the VMM: ``stopped``.

        :raises Conflict: when no VMM process is running.
        """
        return self._transition(name, "kill")

    def quarantine(self, name: str) -> Transition:
        """Sever every host path into the guest; keep the VMM process and PID.

        :raises Conflict: unless running (or paused).
        """
        return self._transition(name, "quarantine")

    # ------------------------------------------------------------ pause, resume

    def pause(self, name: str) -> Transition:
        """Stop the vcpus of a running workspace (memory and processes kept): ``paused``.

        :raises Conflict: unless running (or starting with readiness ``vmm``).
        """
        return self._pause_or_resume(name, "pause", (WorkspaceState.RUNNING, WorkspaceState.STARTING))

    def resume(self, name: str) -> Transition:
        """Continue a paused workspace, also one its VMM paused because the host disk was full.

        :raises Conflict: unless paused.
        :raises ResourceExhausted: when the host disk is still full (it stays paused).
        """
        return self._pause_or_resume(name, "resume", (WorkspaceState.PAUSED,))

    def _pause_or_resume(self, name: str, op: str, allowed: tuple[WorkspaceState, ...]) -> Transition:
        manifest = self.manifest(name)
        with self.lock(name, op):
            observed = self.inspect(name, manifest.backend)
            if observed.state not in allowed or not observed.alive:
                raise Conflict(f"workspace {name} is {observed.state.value}; {op} needs one of: "
                               f"{', '.join(s.value for s in allowed)}",
                               f"check it with 'microagent status {name}'",
                               state=observed.state.value, operation=op)
            resp = self.client(manifest.backend).send(op, name, timeout=60)
        return Transition(name, op, observed.state,
                          WorkspaceState.parse(resp.event.state if resp.event else "unknown"),
                          detail=resp.event.detail if resp.event else "", pid=observed.pid)

    # ------------------------------------------------------------ delete

    def delete(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Remove a workspace's disk, manifest and runtime state.

        Idempotent: a missing workspace answers ``deleted: false``.

        :param force: kill a running VMM first.
        :raises Conflict: while its VMM is alive and ``force`` is false.
        """
        from microagent.workspace import staging

        check_name(name)
        lock = self.lock(name, "delete")
        with lock:
            staging.reap(self.root, name, locked=True)
            has_manifest = manifest_path(self.root, name).is_file()
            has_runtime = self.runtime_path(name).exists()
            has_dir = workspace_dir(self.root, name).exists()
            if not (has_manifest or has_runtime or has_dir):
                lock.unlink_on_release = True
                return {"name": name, "deleted": False, "killed": False}
            backend = self._backend_of(name)
            killed = False
            observed = self.inspect(name, backend)
            if observed.alive or observed.state in LIVE_STATES:
                if not force:
                    require_state("delete", name, observed.state)
                    raise Conflict(f"workspace {name} is {observed.state.value} but its VMM "
                                   f"(pid {observed.pid}) is alive; delete refuses while it runs",
                                   f"kill it first, or use 'microagent delete -f {name}'",
                                   state=observed.state.value, operation="delete")
                if observed.alive:
                    self.client(backend).send("kill", name, timeout=60)
                    killed = True
            self.client(backend).send("delete", name, timeout=60)
            import shutil

            shutil.rmtree(workspace_dir(self.root, name), ignore_errors=True)
            from microagent.workspace.volumes import release

            release(self.root, name)  # its volumes are free for the next workspace
            lock.unlink_on_release = True
        return {"name": name, "deleted": True, "killed": killed, "previousState": observed.state.value}

    def _backend_of(self, name: str) -> str:
        try:
            return self.manifest(name).backend
        except MicroagentError:
            from microagent.runtime_state import read_json

            runtime = read_json(self.runtime_path(name) / "runtime.json")
            if isinstance(runtime, dict) and isinstance(runtime.get("backend"), str):
                return str(runtime["backend"])
            from microagent.workspace.boot_plan import resolve_backend

            return resolve_backend(None)

    # ------------------------------------------------------------ list, wait

    def list(self, *, running_only: bool = False) -> list[dict[str, Any]]:
        """Every workspace with its reconciled state (``running_only``: live VMs only).

        Also removes what killed creates left (:func:`.staging.reap`), so a name
        that no workspace shows is a name ``create`` accepts.
        """
        from microagent.workspace import staging

        staging.reap(self.root)
        out = []
        for m in list_manifests(self.root):
            try:
                obs = self.observe(m.name, m.backend)
            except MicroagentError as exc:
                obs = Observed(m.name, WorkspaceState.UNKNOWN, detail=exc.message)
            if running_only and not obs.alive:
                continue
            out.append({"name": m.name, "state": obs.state.value, "pid": obs.pid if obs.alive else None,
                        "backend": m.backend, "image": m.image.ref, "profile": m.profile,
                        "resources": m.resources, "createdAt": m.createdAt, "createdBy": m.createdBy or None})
        return out

    def wait(self, name: str, *, timeout: float | None = None, poll_s: float = 0.25) -> Observed:
        """Block until the workspace leaves ``starting``/``running``/``paused``/``stopping``.

        :raises NotFound: when the workspace does not exist (or is deleted meanwhile).
        :raises ResourceExhausted: when ``timeout`` seconds pass first.
        """
        from microagent.errors import ResourceExhausted

        timeout = optional_seconds(timeout, "timeout")
        poll_s = seconds(poll_s, "poll_s")
        manifest = self.manifest(name)
        state = WorkspaceState.UNKNOWN

        def settled() -> Observed | None:
            nonlocal state
            if not manifest_path(self.root, name).is_file():
                raise NotFound(f"workspace {name} was deleted while waiting")
            obs = self.observe(name, manifest.backend)
            state = obs.state
            return obs if obs.state not in ACTIVE_STATES else None

        settled_obs = wait_until(settled, timeout, poll_s)
        if settled_obs is None:
            raise ResourceExhausted(f"workspace {name} is still {state.value} after {timeout:g}s",
                                    "wait longer, or stop it")
        return settled_obs

    # ------------------------------------------------------------ events, logs

    def events(self, name: str, *, follow: bool = False, poll_s: float = 0.2) -> Iterator[dict[str, Any]]:
        """The workspace's event timeline (``events.jsonl``), oldest first.

        ``follow`` keeps yielding new events until the workspace is deleted.

        :raises NotFound: when the workspace does not exist.
        """
        import json

        self.manifest(name)
        path = self.runtime_path(name) / "events.jsonl"
        for line in _follow_lines(path, follow, poll_s, lambda: manifest_path(self.root, name).is_file()):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                yield doc

    def logs(self, name: str, *, follow: bool = False, poll_s: float = 0.2,
             max_bytes: int = DEFAULT_LOG_TAIL_BYTES) -> Iterator[bytes]:
        """The guest serial console log (``serial.log``) in chunks: first (always) at most
        its last ``max_bytes``, from a line start; then, with ``follow``, what the guest writes next.

        :raises NotFound: when the workspace does not exist.
        """
        from microagent.serial_log import read_tail

        self.manifest(name)
        path = self.runtime_path(name) / "serial.log"
        tail, size = read_tail(path, max_bytes)
        yield tail
        if follow:
            yield from _follow_bytes(path, True, poll_s, lambda: manifest_path(self.root, name).is_file(),
                                     offset=size)


def _refuse_mounts(manifest: Manifest, op: str) -> None:
    """A snapshot holds the root disk and memory, not volumes or host folders (docs/volumes.md)."""
    if manifest.volumes:
        raise Unsupported(f"workspace {manifest.name} has volumes or host folders ({', '.join(manifest.volumes)}); "
                          f"{op} would not capture their data, so it is not supported",
                          "copy what you need into a volume, or create a new workspace with the same -v options")


def _follow_bytes(path: Path, follow: bool, poll_s: float, still_there: Any, offset: int = 0) -> Iterator[bytes]:
    while True:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                while True:
                    chunk = fh.read(65536)
                    if chunk:
                        offset += len(chunk)
                        yield chunk
                        continue
                    if not follow:
                        return
                    if not still_there():
                        return
                    try:
                        if path.stat().st_size < offset:
                            offset = 0  # truncated/recreated
                            break
                    except FileNotFoundError:
                        break
                    time.sleep(poll_s)
        except FileNotFoundError:
            if not follow or not still_there():
                return
            time.sleep(poll_s)


def _follow_lines(path: Path, follow: bool, poll_s: float, still_there: Any) -> Iterator[str]:
    pending = b""
    for chunk in _follow_bytes(path, follow, poll_s, still_there):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line.decode("utf-8", "replace")
    if pending.strip():
        yield pending.decode("utf-8", "replace")
