"""What ``microagent run`` does once its command line is parsed.

Free of click: :mod:`.main` calls :func:`run_oneshot` directly for a plain
``run [--cold] [--json] IMAGE [--] CMD...`` (click and the command's option
table cost a cold run about 25 ms), and the click command in :mod:`.cmd_run`
calls it for every other form, so both run the same code.
"""

from __future__ import annotations

import sys

from microagent.cli.main import usage_errors

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs CLI start-up time; mypy reads this block
    from collections.abc import Callable
    from typing import Any


def _writer(stream: Any) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()
    return write


def run_oneshot(image: str, command: tuple[str, ...] | list[str], *, backend: str | None = None,
                supervisor: str | None = None, state_dir: str | None = None, as_json: bool = False,
                timeout: float | None = None, boot_timeout: float = 60.0, env: tuple[str, ...] = (),
                workdir: str | None = None, user: str | None = None, memory: int = 512, cpus: int = 1,
                keep: bool = False, network: str = "isolated", publish: tuple[str, ...] = (),
                allow_host_loopback: bool = False, egress_allow: tuple[str, ...] = (),
                egress_allow_cidr: tuple[str, ...] = (), egress_deny_all: bool = False,
                secret: tuple[str, ...] = (), secret_host: tuple[str, ...] = (), arch: str | None = None,
                cold: bool = False, setup: tuple[str, ...] = (), service: str | None = None,
                restart: str = "never", volume: tuple[str, ...] = (), output: tuple[str, ...] = ()) -> int:
    """Run ``command`` in a fresh workspace booted from ``image``; its exit code.

    Every default is the click option's (tests/cli/test_import_cost.py checks them).
    """
    from microagent.cli.output import emit_json
    from microagent.cli.progress import pull_progress
    from microagent.egress.options import policy_from_options
    from microagent.workspace.oneshot import check_run_input
    from microagent.workspace.oneshot import run as run_in_vm
    from microagent.workspace.outputs import parse_output_specs
    from microagent.workspace.services import check_services
    from microagent.workspace.volumes import parse_mount_specs

    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    with usage_errors():
        check_run_input(argv, env=env, timeout=timeout, memory_mib=memory, cpus=cpus, boot_timeout=boot_timeout,
                        network=network, publish=publish, allow_host_loopback=allow_host_loopback)
        egress = policy_from_options(network, egress_allow, egress_allow_cidr, egress_deny_all, secret,
                                     secret_host)
        check_services(setup, service, restart)
        parse_mount_specs(volume)
        parse_output_specs(output)
    progress = pull_progress(as_json)  # layer progress on a TTY only
    try:
        outcome = run_in_vm(
            image, argv, backend=backend, env=list(env), workdir=workdir, user=user, timeout=timeout,
            memory_mib=memory, cpus=cpus, boot_timeout=boot_timeout, state_dir=state_dir,
            supervisor=supervisor, keep=keep, network=network, publish=list(publish), progress=progress,
            allow_host_loopback=allow_host_loopback, arch=arch, cold=cold, egress=egress,
            setup=setup, service=service, restart=restart, volumes=volume, outputs=output,
            stdout=None if as_json else _writer(sys.stdout.buffer),
            stderr=None if as_json else _writer(sys.stderr.buffer),
        )
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        emit_json({"ok": True, **outcome.to_json()})
    elif outcome.result.status in ("timed_out", "failed_to_start"):
        detail = outcome.result.error.get("message", "") if outcome.result.error else ""
        sys.stderr.write(f"microagent: command {outcome.result.status.replace('_', ' ')}"
                         f"{': ' + detail if detail else ''}\n")
    return outcome.exit_code
