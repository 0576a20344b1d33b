"""The ``microagent`` command: a thin dispatcher in front of click commands.

Agents call the CLI hundreds of times, so start-up is kept small: this
module imports neither click nor the library.  ``microagent --help`` is the
overview built from :data:`SUMMARIES`; a plain ``exec NAME [--] CMD...``
(nothing but the name and the command) runs :func:`.exec_run.run_exec`
directly, the same function the click command calls, and a plain
``run [--cold] [--json] IMAGE [--] CMD...`` runs :func:`.oneshot_run.run_oneshot`
the same way.  Every other command
line goes through the click group in :mod:`.group`, which imports only the
invoked command's module (``cli/cmd_*.py``).

This module is the one catch site for :class:`~microagent.errors.MicroagentError`:
it renders the error (text or the JSON envelope) and exits with a named code;
no traceback for user errors.  One exit-code rule for a wrong command line
(docs/cli.md): a bad flag value, a bad argument or a bad combination exits 2
(``USAGE``) in every command, whether click or the library's own input checks
found it; nothing was done.
"""

from __future__ import annotations

import os
import sys

from microagent.cli import exitcodes

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs start-up time; mypy reads this block
    from types import TracebackType
    from typing import Any

#: subcommand -> "module:function"
COMMANDS = {
    "gc": "microagent.cli.cmd_gc:gc",
    "host": "microagent.cli.cmd_host:host",
    "doctor": "microagent.cli.cmd_host:doctor",
    "kernel": "microagent.cli.cmd_kernel:kernel",
    "image": "microagent.cli.cmd_image:image",
    "run": "microagent.cli.cmd_run:run",
    "create": "microagent.cli.cmd_workspace:create",
    "apply": "microagent.cli.cmd_apply:apply",
    "start": "microagent.cli.cmd_workspace:start",
    "halt": "microagent.cli.cmd_workspace:halt",
    "stop": "microagent.cli.cmd_workspace:stop",
    "kill": "microagent.cli.cmd_workspace:kill",
    "quarantine": "microagent.cli.cmd_workspace:quarantine",
    "pause": "microagent.cli.cmd_pause:pause",
    "resume": "microagent.cli.cmd_pause:resume",
    "snapshot": "microagent.cli.cmd_snapshot:snapshot",
    "volume": "microagent.cli.cmd_volume:volume",
    "commit": "microagent.cli.cmd_commit:commit",
    "clone": "microagent.cli.cmd_commit:clone",
    "stats": "microagent.cli.cmd_commit:stats",
    "delete": "microagent.cli.cmd_workspace:delete",
    "list": "microagent.cli.cmd_workspace:list_",
    "ls": "microagent.cli.cmd_workspace:ls",
    "ps": "microagent.cli.cmd_workspace:ps",
    "status": "microagent.cli.cmd_workspace:status",
    "wait": "microagent.cli.cmd_workspace:wait",
    "logs": "microagent.cli.cmd_workspace:logs",
    "events": "microagent.cli.cmd_workspace:events",
    "cp": "microagent.cli.cmd_workspace:cp",
    "exec": "microagent.cli.cmd_exec:exec_",
    "connect": "microagent.cli.cmd_exec:connect",
    "mcp": "microagent.cli.cmd_mcp:mcp",
    "egress": "microagent.cli.cmd_egress:egress",
    "cluster": "microagent.cli.cmd_cluster:cluster",
}

#: One line per command for ``microagent --help``, so the overview needs no
#: command module; tests/cli/test_import_cost.py keeps it equal to each
#: command's own short help.
SUMMARIES = {
    "gc": "Reconcile every workspace; remove leftovers (helpers, TAPs, rules, leases) of dead VMs.",
    "host": "Show what this host can run and which backend is active, and why.",
    "doctor": "Check the host for the active backend; exit 1 when a required check fails.",
    "kernel": "Install, build and check guest kernels.",
    "image": "Pull and manage cached OCI images.",
    "run": "Boot IMAGE in a fresh VM, run COMMAND, print its output, exit with its code.",
    "create": "Create workspace NAME: build its disk and manifest (state prepared); boot nothing.",
    "apply": "Create a workspace from a spec file, or bring an existing one to it, saying what changed.",
    "start": "Boot workspace NAME; returns once its guest channel is ready.",
    "halt": "Shut NAME down cleanly through guest init (disk flushed): halted.",
    "stop": "SIGTERM the VMM of NAME, wait a grace period: stopped (failed if it survives).",
    "kill": "SIGKILL the VMM of NAME: stopped.",
    "quarantine": "Cut every host path into NAME, keep its VM process and PID: quarantined.",
    "pause": "Stop the vcpus of NAME (memory and processes kept): paused.",
    "resume": "Continue paused NAME, also after a full host disk paused it (once there is space again).",
    "snapshot": "Save, list and remove snapshots of a workspace (memory, device state and disk).",
    "volume": "Create, list, inspect and remove volumes: ext4 disks that outlive workspaces (-v NAME:/path).",
    "commit": "Save the disk of NAME (prepared, stopped or halted) as image IMAGE_REF.",
    "clone": "Copy workspace NAME (prepared, stopped or halted) as NEW (prepared).",
    "stats": "CPU time and memory of NAME's VMM and helpers, guest memory, disk and network use.",
    "delete": "Delete NAME's disk and state (refused while its VM runs, unless -f).",
    "list": "List every workspace with its state.",
    "ls": "List every workspace with its state (alias of list).",
    "ps": "List workspaces whose VM is running.",
    "status": "State, readiness, PID, resources, disk and verification of NAME.",
    "wait": "Block until NAME is no longer running; exit 0 if stopped/halted, 1 otherwise.",
    "logs": "The guest serial console log of NAME (its end: the log itself is capped, see docs/state.md).",
    "events": "The event timeline of NAME (with --json -f: one JSON object per line).",
    "cp": "Copy a file into or out of a running workspace: one side is NAME:/abs/path.",
    "exec": "Run COMMAND in running workspace NAME; exit with its exit code.",
    "connect": "Open an interactive shell in running workspace NAME (Ctrl-] detaches).",
    "mcp": "Serve MCP tools that create, drive and delete workspaces (docs/mcp.md).",
    "egress": "Show the egress audit log of a workspace, or change its allowlist and secrets.",
    "cluster": "Workspaces across a Ray cluster: nodes, capacity, host agents (docs/cluster.md).",
}

DESCRIPTION = "Run AI-agent workspaces in Linux microVMs."
HELP_OPTIONS = ("-h", "--help")
_WIDTH = 78


def _summary(name: str) -> str:
    summary = SUMMARIES.get(name)
    if summary is None:  # a command without a table entry: ask it (imports its module)
        from microagent.cli.group import load_command

        summary = load_command(name).get_short_help_str(limit=_WIDTH)
    return summary


def overview() -> str:
    """The top-level help text (``microagent --help``)."""
    pad = max(map(len, COMMANDS)) + 2
    limit = _WIDTH - pad - 2
    lines = ["Usage: microagent [OPTIONS] COMMAND [ARGS]...", "", f"  {DESCRIPTION}", "",
             "Options:", "  --version   Show the version and exit.", "  -h, --help  Show this message and exit.",
             "", "Commands:"]
    for name in sorted(COMMANDS):
        summary = _summary(name)
        if len(summary) > limit:
            summary = summary[: limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
        lines.append(f"  {name:<{pad}}{summary}")
    return "\n".join(lines) + "\n"


def plain_exec(args: list[str]) -> tuple[str, list[str]] | None:
    """``(NAME, COMMAND)`` when the words after ``exec`` are only a name and a command.

    The same split click's parse of ``exec`` gives for such a command line (no
    option before or right after NAME; a leading ``--`` stays in COMMAND for
    :func:`.exec_run.run_exec` to drop); anything else returns None and goes
    through click.
    """
    if len(args) < 2 or args[0].startswith("-") or (args[1].startswith("-") and args[1] != "--"):
        return None
    return args[0], args[1:]


#: the only options a plain ``run`` may have (before IMAGE), and run_oneshot's parameter for each
PLAIN_RUN_FLAGS = {"--cold": "cold", "--json": "as_json"}


def plain_run(args: list[str]) -> tuple[str, list[str], dict[str, bool]] | None:
    """``(IMAGE, COMMAND, flags)`` when the words after ``run`` are only ``--cold`` or
    ``--json`` flags, an image and a command (possibly empty).

    The same split click's parse of ``run`` gives for such a command line (options
    end at IMAGE; a leading ``--`` stays in COMMAND for :func:`.oneshot_run.run_oneshot`
    to drop); anything else returns None and goes through click.
    """
    flags: dict[str, bool] = {}
    at = 0
    while at < len(args) and args[at] in PLAIN_RUN_FLAGS:
        flags[PLAIN_RUN_FLAGS[args[at]]] = True
        at += 1
    if at == len(args) or args[at].startswith("-"):
        return None
    return args[at], args[at + 1:], flags


def _json_requested(argv: list[str]) -> bool:
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in head or os.environ.get("MICROAGENT_OUTPUT") == "json"


def _failure_code(argv: list[str]) -> int:
    """``run``/``exec`` report microagent's own failures as 125 (docker convention)."""
    first = next((a for a in argv if not a.startswith("-")), "")
    return exitcodes.RUN_INFRA if first in ("run", "exec") else exitcodes.FAILURE


def _dispatch(argv: list[str], as_json: bool) -> Any:
    plain = plain_exec(argv[1:]) if argv[:1] == ["exec"] else None
    if plain is not None:
        from microagent.cli.exec_run import run_exec

        return run_exec(plain[0], plain[1], state_dir=os.environ.get("MICROAGENT_STATE_DIR") or None)
    plain_r = plain_run(argv[1:]) if argv[:1] == ["run"] else None
    if plain_r is not None:
        from microagent.cli.oneshot_run import run_oneshot

        image, command, flags = plain_r
        return run_oneshot(image, command, state_dir=os.environ.get("MICROAGENT_STATE_DIR") or None, **flags)
    from microagent.cli.group import invoke

    return invoke(argv, as_json)


def main(argv: list[str] | None = None) -> None:
    as_script = argv is None  # the console script: this process ends with the command
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0] in HELP_OPTIONS:
        sys.stdout.write(overview())
        sys.exit(exitcodes.OK)

    from microagent.errors import MicroagentError
    from microagent.fsutil import restrict_umask

    as_json = _json_requested(argv)
    restrict_umask()  # everything under the state root, and every socket a VMM opens, is the user's alone
    try:
        code = _dispatch(argv, as_json)
    except MicroagentError as err:
        from microagent.cli.output import print_error

        print_error(err.to_dict(), as_json)
        sys.exit(_failure_code(argv))
    except BadInput as exc:
        from microagent.cli.output import print_error

        print_error(exc.error.to_dict(), as_json)
        sys.exit(exitcodes.USAGE)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: say it is a bug, keep the traceback
        import traceback

        traceback.print_exc()
        sys.stderr.write(f"microagent: internal error: {exc}\n")
        sys.exit(_failure_code(argv))
    code = code if isinstance(code, int) else exitcodes.OK
    if as_script:
        _end(code)
    sys.exit(code)


def _end(code: int) -> None:
    """End the process without the interpreter's teardown (freeing every module and
    object: about 4 ms after an exec, 15 ms after a run), once nothing is lost by it:
    no thread left to wait for, the atexit handlers run, the standard streams flushed.
    Every file microagent writes is closed where it is written. Returns when a thread
    still runs or a stream cannot be flushed: the caller's exit reports that as usual."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # e.g. a closed pipe: the usual exit reports it
        return
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # what a handler wrote
        except (OSError, ValueError):
            pass
    os._exit(code)


class BadInput(Exception):
    """A wrong command line found by the library's input checks: exit 2, its message and hint kept."""

    def __init__(self, error: Any) -> None:
        super().__init__(error.message)
        self.error = error


class usage_errors:  # noqa: N801 - used as ``with usage_errors():``; a class, as contextlib costs start-up
    """Around input checks that run before any side effect: their errors are usage errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        from microagent.errors import Permanent

        if isinstance(exc, Permanent):
            raise BadInput(exc) from exc


# Option decorators shared by the commands; click is imported by the command modules anyway.
def json_option(f: Any) -> Any:
    import click

    return click.option("--json", "as_json", is_flag=True, help="print one JSON document")(f)


def state_dir_option(f: Any) -> Any:
    import click

    return click.option("--state-dir", envvar="MICROAGENT_STATE_DIR", default=None,
                        help="state directory (default ~/.microagent)")(f)


def backend_option(f: Any) -> Any:
    import click

    return click.option("--backend", default=None,
                        help="firecracker | qemu | apple-vf | windows-hyperv (default: per host)")(f)


def __getattr__(name: str) -> Any:
    if name == "cli":  # the click group, for callers that drive click directly
        from microagent.cli.group import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
