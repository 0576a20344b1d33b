"""One-shot runs: boot a throwaway workspace, run one command, tear it down.

Order matters for "fail closed before side effects": the backend, image
reference, kernel and guest init are all checked before any disk is copied
or any VMM is spawned.  Whatever happens after the VM starts, the VM is
stopped and its state removed (unless ``keep``), so nothing is left behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

from msgspec import Struct, field

from microagent.errors import InvalidRequest, MicroagentError
from microagent.vmkit.types import Network, PortForward
from microagent.images.resolve import resolve_image
from microagent.workspace.boot_plan import BootPlan, plan_boot
from microagent.workspace.channel_path import guest_channel_path
from microagent.workspace.supervisor_client import SupervisorClient

if TYPE_CHECKING:
    from microagent.egress.policy import EgressPolicy
    from microagent.images.blobs import PullProgress
    from microagent.workspace.warm import WarmKey

OutputSink = Callable[[bytes], None] | BinaryIO | None


class RunOutcome(Struct):
    """What a one-shot run produced: the guest result plus host-side timings."""

    workspace: str
    backend: str
    result: Any  # microagent.channel.ExecResult
    timings: dict[str, float] = field(default_factory=dict)
    warm: bool = False  # restored from a boot snapshot instead of booting
    outputs: list[dict[str, Any]] = field(default_factory=list)  # what --output copied back

    @property
    def exit_code(self) -> int:
        return int(self.result.exit_code)

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "backend": self.backend,
            "warm": self.warm,
            "result": self.result.to_dict(),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            **({"outputs": self.outputs} if self.outputs else {}),
        }


class _Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.last = self.t0
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.marks[name] = now - self.last
        self.last = now

    def total(self) -> dict[str, float]:
        return {**self.marks, "total": time.monotonic() - self.t0}


def run(image: str, argv: list[str], *, backend: str | None = None, env: list[str] | None = None,
        workdir: str | None = None, user: str | None = None, timeout: float | None = None,
        memory_mib: int = 512, cpus: int = 1, boot_timeout: float = 60.0,
        state_dir: str | Path | None = None, supervisor: str | None = None,
        stdout: OutputSink = None, stderr: OutputSink = None, keep: bool = False,
        network: str = "isolated", publish: list[str] | None = None,
        progress: "PullProgress | None" = None, allow_host_loopback: bool = False,
        arch: str | None = None, cold: bool = False, egress: "EgressPolicy | None" = None,
        setup: Sequence[str] = (), service: str | None = None, restart: str = "never",
        volumes: Sequence[str] = (), outputs: Sequence[str] = ()) -> RunOutcome:
    """Run ``argv`` in a fresh workspace booted from ``image``.

    ``arch`` is the guest architecture (default: the host's; QEMU emulates another).

    An isolated run on a backend that takes snapshots restores the boot snapshot
    of its image, kernel, guest init and resources (:mod:`.warm`) instead of
    booting; the first such run boots and saves it.  ``cold`` boots regardless
    and saves nothing.

    With an empty ``argv`` the image's Entrypoint + Cmd run, as ``docker run IMAGE`` does.
    ``setup`` commands run first, in order (a failing one ends the run with its exit code
    and output); ``service`` is started by guest init at boot (docs/services.md).
    ``volumes``: ``-v`` specs (docs/volumes.md); a run holds its volumes until it ends.
    ``outputs``: ``HOST_DIR=/guest/path`` specs copied back after the command, whatever its
    exit code, before the VM goes away (:mod:`.outputs`); a failed copy fails the run.

    :param stdout: where guest stdout goes as it arrives (a callable or a binary
        file); ``None`` collects it into the result only.
    :raises Unsupported: backend not runnable here, or image not servable.
    :raises NotFound: kernel, guest init, image or host tool missing.
    :raises MicroagentError: any boot or channel failure (the VM is torn down).
    """
    from microagent.fsutil import private_dir
    from microagent.images.ext4 import copy_disk
    from microagent.workspace.services import check_services

    setup, service_cmd, restart = check_services(setup, service, restart)
    from microagent.workspace import volumes as vols

    mounts = vols.parse_mount_specs(volumes)
    from microagent.workspace.outputs import copy_outputs, parse_output_specs

    wanted_outputs = parse_output_specs(outputs)
    copied: list[dict[str, Any]] = []
    watch = _Stopwatch()
    name = f"run-{os.urandom(4).hex()}"
    timeout, boot_timeout, published = check_run_input(
        argv, env=env or (), timeout=timeout, memory_mib=memory_mib, cpus=cpus, boot_timeout=boot_timeout,
        network=network, publish=publish or (), allow_host_loopback=allow_host_loopback)
    plan: BootPlan = plan_boot(image, name, backend=backend, state_dir=state_dir,
                               memory_mib=memory_mib, cpus=cpus, boot_timeout=boot_timeout, arch=arch)
    vols.check_attachable(plan.state_root, mounts, plan.backend, plan.kernel_path)
    try:  # on firecracker a host folder is copied into a disk now (docs/volumes.md)
        plan.disks, plan.shares = vols.vm_devices(plan.state_root, mounts, backend=plan.backend, workspace=name)
    except BaseException:
        import shutil

        shutil.rmtree(plan.disk_path.parent, ignore_errors=True)
        raise
    # egress: the allowlist proxy (docs/egress.md); a run with one always boots (the warm
    # snapshot's guest was booted without the proxy's port and variables).
    egress_config, secret_values = None, {}
    if egress is not None:
        from microagent.egress.options import to_config
        from microagent.egress.secrets import read_values

        egress_config = to_config(egress.to_wire())
        secret_values = read_values(egress.secrets)  # before anything boots
    plan.network = Network(mode=network, portForwards=published, allowHostLoopback=allow_host_loopback,
                           egress=egress_config)
    watch.mark("prepare")
    client = SupervisorClient(plan.backend, plan.state_root, supervisor)
    started = warm = False
    vols.claim(plan.state_root, name, mounts)
    try:
        key = None
        plan.image = resolve_image(plan.image_ref, plan.state_root, plan.guest_init, architecture=plan.arch,
                                   progress=progress)
        argv = list(argv) or plan.image.config.default_argv()
        if not argv:
            raise InvalidRequest(f"image {image} has no Entrypoint or Cmd, and no command was given",
                                 f"give one: microagent run {image} -- CMD...")
        if service_cmd:
            from microagent.vmkit.types import Service

            plan.service = Service(command=service_cmd, restart=restart,  # type: ignore[arg-type]
                                   user=user or plan.image.config.user, workdir=workdir or plan.image.config.working_dir)
        if not cold and network == "isolated" and not published and egress is None and not service_cmd \
                and not mounts:
            from microagent.workspace import warm as warm_boot

            if plan.backend in warm_boot.WARM_BACKENDS:
                key = warm_boot.key_for(
                    plan.state_root, backend=plan.backend, arch=plan.arch, image_ref=plan.image_ref,
                    image_digest=plan.image.digest, base_disk=plan.image.disk, kernel=plan.kernel_path,
                    initrd=plan.initrd_path, memory_mib=memory_mib, cpus=cpus,
                    disk_bytes=plan.image.disk.stat().st_size)
                warm = _restore(client, plan, key, boot_timeout)
                started = warm
        watch.mark("restore" if warm else "prepare_disk")
        if not warm:
            private_dir(plan.disk_path.parent)
            copy_disk(plan.image.disk, plan.disk_path, durable=False)  # gone with the run
            client.send("start", name, plan.config, timeout=boot_timeout + 30)
            started = True
            if secret_values:  # to the egress proxy's memory, never a file (docs/egress.md)
                from microagent.egress.vault import supply

                supply(plan.runtime_dir, secret_values, name)
            watch.mark("boot")
            if key is not None:
                warm_boot.save_booted(client, name, key)
                watch.mark("save_warm")
        # the channel client loads while guest init finishes its boot (it answered the
        # HELLO first: docs/protocol.md), not before the VMM starts
        from microagent.channel import ExecRequest, open_channel
        from microagent.channel import exec as guest_exec

        request = ExecRequest(argv=list(argv), env=[*plan.image.config.env, *(env or [])],
                              cwd=workdir or plan.image.config.working_dir or None,
                              user=user or plan.image.config.user or None,
                              timeout_s=timeout)
        alone = _threads()
        with open_channel(guest_channel_path(plan.state_root, name), hello_timeout=10.0) as conn:
            if setup:
                _run_setup(conn, setup, request)
                watch.mark("setup")
            result = guest_exec.start(conn, request, stdout=stdout, stderr=stderr).wait()
            watch.mark("exec")
            if wanted_outputs:
                copied = copy_outputs(conn, wanted_outputs)
                watch.mark("outputs")
        if alone:
            _join_channel_threads(alone)
        # a throwaway disk needs no clean shutdown: killing saves the guest's poweroff;
        # volumes do (the guest's unwritten pages, a clean journal for the next user)
        if keep or mounts:
            client.send("halt", name)
        else:  # one worker kills and deletes
            client.send_each(["kill", "delete"], name)
        watch.mark("shutdown")
    except BaseException:
        if started:
            _force_stop(client, name)
        if not keep:
            _delete_quietly(client, name)
            vols.release(plan.state_root, name)
        raise
    if not keep:
        if mounts:
            client.send("delete", name)
        vols.release(plan.state_root, name)
        watch.mark("cleanup")
    return RunOutcome(workspace=name, backend=plan.backend, result=result, timings=watch.total(), warm=warm,
                      outputs=copied)


def _restore(client: SupervisorClient, plan: BootPlan, key: "WarmKey", boot_timeout: float) -> bool:
    """Start ``plan``'s workspace from ``key``'s boot snapshot: its disk copied, its memory
    mapped copy-on-write.  ``False`` (nothing left running) when there is none or it
    cannot be restored (a QEMU update, damage): then the entry is gone and the caller boots."""
    from microagent.fsutil import private_dir
    from microagent.images.ext4 import copy_disk
    from microagent.workspace import warm as warm_boot

    snap = warm_boot.lookup(key)
    if snap is None:
        return False
    private_dir(plan.disk_path.parent)
    copy_disk(snap.path / "disk", plan.disk_path)
    try:
        client.send("start", plan.name, plan.config, timeout=boot_timeout + 30,
                    snapshot=warm_boot.restore_spec(snap))
    except MicroagentError:
        _force_stop(client, plan.name)
        warm_boot.discard(key)
        return False
    return True




def _run_setup(conn: Any, setup: Sequence[str], like: Any) -> None:
    """Each setup command as ``sh -c CMD`` with the run's env, user and workdir.

    :raises Permanent: naming the first that failed, its exit code and its output's end.
    """
    from microagent.channel import exec as guest_exec
    from microagent.errors import Permanent
    from microagent.workspace.services import SETUP_OUTPUT_TAIL

    for i, cmd in enumerate(setup):
        tail = bytearray()

        def keep(chunk: bytes) -> None:
            tail.extend(chunk)
            del tail[:max(0, len(tail) - SETUP_OUTPUT_TAIL)]

        req = like.replace(argv=["sh", "-c", cmd], timeout_s=None, stdout_limit=0, stderr_limit=0)
        result = guest_exec.start(conn, req, stdout=keep, stderr=keep).wait()
        if result.exit_code != 0:
            raise Permanent(f"setup command {i + 1} of {len(setup)} ({cmd!r}) exited with {result.exit_code}; "
                            f"the command did not run. Its output ended with:\n"
                            f"{bytes(tail).decode('utf-8', 'replace').rstrip()[-2000:]}",
                            "fix the setup command, or check it with 'microagent run IMAGE -- sh -c CMD'",
                            exitCode=result.exit_code)


def check_run_input(argv: Sequence[str], *, env: Sequence[str] = (), timeout: float | None = None,
                    memory_mib: int = 512, cpus: int = 1, boot_timeout: float = 60.0,
                    network: str = "isolated", publish: Sequence[str] = (),
                    allow_host_loopback: bool = False) -> tuple[float | None, float, tuple[PortForward, ...]]:
    """Every check of a run's input that needs no image, kernel or backend (the same
    ranges and messages as ``create``).

    :returns: the validated ``timeout`` and ``boot_timeout``, and the parsed publications.
    :raises Permanent: a bad duration, env entry, resource, network mode or publication,
        or an argv + env too large to send.
    """
    from microagent.durations import optional_seconds, seconds
    from microagent.network.publish import check_network, parse_publish
    from microagent.workspace.profiles import check_host_fit
    from microagent.workspace.sessions import check_command_size, check_env

    checked_timeout = optional_seconds(timeout, "timeout")
    checked_boot = seconds(boot_timeout, "boot_timeout")
    check_host_fit(memory_mib, cpus)
    env = check_env(env)
    check_command_size(argv, env)
    published = tuple(parse_publish(p) for p in publish)
    check_network(network, published, allow_host_loopback)
    return checked_timeout, checked_boot, published


def _threads() -> list[Any] | None:
    """This process's one thread, when it has only one (else ``None``)."""
    import threading

    return threading.enumerate() if threading.active_count() == 1 else None


def _join_channel_threads(before: list[Any], timeout: float = 1.0) -> None:
    """Wait for the threads the exec's channel started: they end with it, an instant after
    the result. Left running, the process is not single-threaded and the teardown runs
    the supervisor's executable instead of a forked worker (:mod:`microagent.vmkit.dispatch`)."""
    import threading

    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread not in before:
            thread.join(max(0.0, deadline - time.monotonic()))


def _force_stop(client: SupervisorClient, name: str) -> None:
    try:
        client.send("kill", name, timeout=30)
    except MicroagentError:
        pass


def _delete_quietly(client: SupervisorClient, name: str) -> None:
    try:
        client.send("delete", name, timeout=30)
    except MicroagentError:
        pass
