"""``microagent run IMAGE [--] CMD...``: a one-shot workspace (the option table; the
work is :func:`microagent.cli.oneshot_run.run_oneshot`'s)."""

from __future__ import annotations

import click

from microagent.cli.egress_options import egress_options
from microagent.cli.service_options import setup_service_options, volume_option
from microagent.cli.main import backend_option, json_option, state_dir_option
from microagent.cli.params import SECONDS


@click.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@backend_option
@click.option("--supervisor", default=None, help="path of the supervisor executable to use")
@state_dir_option
@json_option
@click.option("--timeout", type=SECONDS, default=None, help="kill the command after S seconds")
@click.option("--boot-timeout", type=SECONDS, default=60.0, show_default=True,
              help="give up if the guest is not up after S seconds")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="environment variable")
@click.option("--workdir", "-w", default=None, help="working directory in the guest")
@click.option("--user", "-u", default=None, help="user in the guest (name, UID or UID:GID)")
@click.option("--memory", type=int, default=512, show_default=True, help="MiB (at most this host's memory)")
@click.option("--cpus", type=int, default=1, show_default=True, help="vCPUs (at most this host's CPUs)")
@click.option("--keep", is_flag=True, help="keep the workspace's disk and state afterwards")
@click.option("--network", default="isolated", show_default=True,
              help="isolated (no NIC) | user (pasta: internet only; root) | nat (TAP + masquerade; root)")
@click.option("-p", "--publish", multiple=True, metavar="[HOST_IP:]HOST_PORT:GUEST_PORT[/tcp]",
              help="publish a guest TCP port on the host while the command runs")
@click.option("--allow-host-loopback", is_flag=True,
              help="let the guest reach the host through its gateway (user: the host's loopback); off by default")
@egress_options
@setup_service_options
@volume_option
@click.option("--output", "output", multiple=True, metavar="HOST_DIR=/GUEST/PATH",
              help="after the command, copy /GUEST/PATH (a file or a directory's tree) into HOST_DIR, "
                   "created if missing; works on every backend (repeatable)")
@click.option("--cold", is_flag=True,
              help="boot, even when a boot snapshot of this image could be restored (and save none)")
@click.option("--arch", default=None, metavar="ARCH",
              help="guest architecture: x86_64 or aarch64 (default: this host's; another is emulated, slowly)")
def run(image: str, command: tuple[str, ...], backend: str | None, supervisor: str | None,
        state_dir: str | None, as_json: bool, timeout: float | None, boot_timeout: float,
        env: tuple[str, ...], workdir: str | None, user: str | None, memory: int, cpus: int,
        keep: bool, network: str, publish: tuple[str, ...], allow_host_loopback: bool,
        egress_allow: tuple[str, ...], egress_allow_cidr: tuple[str, ...], egress_deny_all: bool,
        secret: tuple[str, ...], secret_host: tuple[str, ...], arch: str | None, cold: bool,
        setup: tuple[str, ...], service: str | None, restart: str, volume: tuple[str, ...],
        output: tuple[str, ...]) -> int:
    """Boot IMAGE in a fresh VM, run COMMAND, print its output, exit with its code.

    Put options before IMAGE; everything after IMAGE (or after --) is the command.
    An isolated run restores the image's boot snapshot when there is one (the
    first run saves it); --cold boots instead.
    """
    from microagent.cli.oneshot_run import run_oneshot

    return run_oneshot(
        image, command, backend=backend, supervisor=supervisor, state_dir=state_dir, as_json=as_json,
        timeout=timeout, boot_timeout=boot_timeout, env=env, workdir=workdir, user=user, memory=memory, cpus=cpus,
        keep=keep, network=network, publish=publish, allow_host_loopback=allow_host_loopback,
        egress_allow=egress_allow, egress_allow_cidr=egress_allow_cidr, egress_deny_all=egress_deny_all,
        secret=secret, secret_host=secret_host, arch=arch, cold=cold, setup=setup, service=service,
        restart=restart, volume=volume, output=output)
