"""The CLI's start-up cost, counted in imported modules (no timing).

``microagent --help`` runs no command module and not click; a plain
``microagent exec NAME -- CMD`` skips click too, and the wire types (msgspec),
networking, images, snapshots and subprocess. Each list below is a ceiling
and a set of modules that must stay off the path: a change that pulls in a
heavy module fails here, before anyone notices the CLI got slower.  The exec
path is counted on a whole exec: the real guest agent serves a workspace
whose records say it runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from microagent.cli.exec_run import run_exec
from microagent.cli.main import COMMANDS, SUMMARIES, main, plain_exec, plain_run
from microagent.cli.oneshot_run import run_oneshot
from microagent.errors import NotFound
from microagent.guestinit import find_guest_init
from microagent.host.process import ref_for
from microagent.runtime_state import write_json_atomic
from microagent.vmkit.basics import now_rfc3339
from microagent.workspace.manifest import FileDigest, ImageRecord, Manifest, Verification, save_manifest

#: Modules never wanted on the --help or exec path.
HEAVY = ("click", "microagent.images", "microagent.kernels", "microagent.supervisors.qemu",
         "microagent.host.detect", "microagent.network.firewall", "microagent.channel.forward",
         "microagent.channel.files", "microagent.channel.router", "rich", "urllib3", "http.client",
         "email", "tarfile", "ray", "microagent.cluster")
#: --help: python's own start-up plus the dispatcher.
HELP_HEAVY = HEAVY + ("microagent.errors", "microagent.workspace", "microagent.channel", "subprocess", "json",
                      "typing")
HELP_MAX_MODULES = 40
#: exec: what a whole exec needs beyond --help (the state records, the channel client).
EXEC_HEAVY = HEAVY + ("msgspec", "microagent.vmkit.types", "microagent.network", "microagent.host.detect",
                      "microagent.workspace.snapshots", "microagent.workspace.staging",
                      "microagent.workspace.supervisor_client", "microagent.vmkit.dispatch", "subprocess",
                      "logging", "datetime", "tempfile", "platform", "shutil", "secrets", "uuid")
#: exec of a running workspace: its records are read as plain JSON, so neither the
#: lifecycle module nor the manifest's dataclasses load; no module on the path imports
#: typing, pathlib (with urllib.parse and ipaddress) or socket.py (the channel uses
#: _socket), and what only some execs need (select, math, contextlib) loads where
#: used. Each of these costs up to milliseconds on every call.
RUNNING_EXEC_HEAVY = EXEC_HEAVY + ("typing", "dataclasses", "inspect", "ast", "pathlib", "urllib", "ipaddress",
                                   "socket", "signal", "selectors", "select", "math", "contextlib",
                                   "microagent.workspace.lifecycle",
                                   "microagent.workspace.manifest", "microagent.runtime_state",
                                   "microagent.waiting")
EXEC_MAX_MODULES = 92  # 87 now; 132 with the lifecycle module, dataclasses, typing, pathlib; 208 with click

PROBE = """
import sys
from microagent.cli.main import main
code = None
try:
    main({argv!r})
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
sys.stderr.write("exit=%s\\n" % code + "\\n".join(sorted(sys.modules)))
"""


def modules_loaded(argv: list[str], state_dir: Path | None = None) -> set[str]:
    return probe(argv, state_dir)[1]


def probe(argv: list[str], state_dir: Path | None = None) -> tuple[str, set[str]]:
    """The exit code ``main(argv)`` gave and the modules it loaded, in a fresh interpreter."""
    env = None
    if state_dir is not None:
        env = {**os.environ, "MICROAGENT_STATE_DIR": str(state_dir)}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          env=env, check=True)
    first, _, rest = proc.stderr.rpartition("exit=")[2].partition("\n")
    return first, set(rest.split("\n"))


@pytest.fixture
def running_workspace(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A state root whose workspace ``ws`` reads as running, its channel served by the real guest agent."""
    try:
        agent = find_guest_init()
    except NotFound as exc:
        pytest.fail(f"{exc.message} (run 'make guest')")
    root, name = tmp_path / "state", "ws"
    rt = root / "run" / name
    rt.mkdir(parents=True, mode=0o700)
    (root / "workspaces" / name).mkdir(parents=True, mode=0o700)
    digest = FileDigest(str(agent), "")
    save_manifest(root, Manifest(name=name, image=ImageRecord("builtin:busybox", ""), backend="qemu",
                                 profile="tiny", memoryMiB=256, cpuCount=1, diskSizeMiB=0,
                                 createdAt=now_rfc3339(), verification=Verification(digest, digest, digest)))
    sock = rt / "channel.sock"
    proc = subprocess.Popen([str(agent), "--agent", "--listen", str(sock)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sock.exists(), f"the agent did not listen on {sock} (exit {proc.poll()})"
        ref = ref_for(proc.pid)
        write_json_atomic(rt / "runtime.json", {"state": "running", "backend": "qemu", "pid": ref.pid,
                                                "starttime": ref.starttime})
        yield root, name
    finally:
        proc.kill()
        proc.wait(5)


def offenders(loaded: set[str], heavy: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded for h in heavy if m == h or m.startswith(h + "."))


def test_help_imports_only_the_dispatcher() -> None:
    loaded = modules_loaded(["--help"])
    assert offenders(loaded, HELP_HEAVY) == []
    assert len(loaded) <= HELP_MAX_MODULES, f"--help imported {len(loaded)} modules: {sorted(loaded)}"


def test_plain_exec_skips_click_and_the_heavy_library(running_workspace: tuple[Path, str]) -> None:
    root, name = running_workspace
    code, loaded = probe(["exec", name, "--", "sh", "-c", "exit 7"], state_dir=root)
    assert code == "7", "the command's exit code is the CLI's"
    assert "microagent.cli.exec_run" in loaded and "microagent.channel.exec" in loaded
    assert offenders(loaded, RUNNING_EXEC_HEAVY) == []
    assert len(loaded) <= EXEC_MAX_MODULES, f"exec imported {len(loaded)} modules: {sorted(loaded)}"


def test_exec_of_a_missing_workspace_stays_light(tmp_path: Path) -> None:
    code, loaded = probe(["exec", "nosuch", "--", "true"], state_dir=tmp_path)
    assert code == "125"
    assert offenders(loaded, EXEC_HEAVY) == []


def test_the_fast_path_keeps_the_image_defaults(running_workspace: tuple[Path, str]) -> None:
    """The records read without the manifest module still give the image's working directory."""
    root, name = running_workspace
    from microagent.workspace.manifest import load_manifest

    manifest = load_manifest(root, name)
    save_manifest(root, dataclasses.replace(manifest, image=dataclasses.replace(manifest.image, workdir="/tmp")))
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=["exec", name, "--", "pwd"])],
                          capture_output=True, text=True, env={**os.environ, "MICROAGENT_STATE_DIR": str(root)})
    assert proc.stdout == "/tmp\n", proc.stderr[:2000]


def test_a_workspace_not_recorded_running_takes_the_full_guard(running_workspace: tuple[Path, str]) -> None:
    """Any record but a plainly running one goes through the lifecycle module's state check."""
    root, name = running_workspace
    write_json_atomic(root / "run" / name / "runtime.json", {"state": "stopped", "backend": "qemu"})
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=["exec", name, "--", "true"])],
                          capture_output=True, text=True, env={**os.environ, "MICROAGENT_STATE_DIR": str(root)})
    assert "exit=125" in proc.stderr
    assert f"workspace {name} is stopped; exec needs one of: running" in proc.stderr
    assert "microagent.workspace.lifecycle" in proc.stderr.split("exit=125")[1]


def test_every_command_has_its_summary() -> None:
    """The --help overview is built from SUMMARIES; each must be the command's own short help."""
    from microagent.cli.group import load_command

    missing = sorted(set(COMMANDS) - set(SUMMARIES))
    assert missing == [], f"add these to SUMMARIES in cli/main.py: {missing}"
    for name in COMMANDS:
        assert SUMMARIES[name] == load_command(name).get_short_help_str(limit=300), name


@pytest.mark.parametrize("args", [
    ["ws", "--", "true"], ["ws", "true"], ["ws", "ls", "-la"], ["ws", "--", "--", "x"], ["ws", "--"],
    ["ws", "-", "x"], ["ws", "-e", "A=1", "true"], ["-e", "A=1", "ws", "true"], ["ws", "--json", "true"],
    ["--help"], ["ws"], ["ws", "-it", "sh"],
])
def test_plain_exec_splits_like_click(args: list[str]) -> None:
    """The click-free path takes only command lines click would split the same way, with no option set."""
    exec_cmd = importlib.import_module("microagent.cli.cmd_exec").exec_
    plain = plain_exec(args)
    if plain is None:
        return  # click parses it
    ctx = exec_cmd.make_context("exec", list(args), resilient_parsing=True)
    assert (ctx.params["name"], list(ctx.params["command"])) == (plain[0], plain[1])
    # every option at the value run_exec takes when the plain path calls it
    defaults = {k: p.default for k, p in inspect.signature(run_exec).parameters.items()
                if p.kind is p.KEYWORD_ONLY and k != "state_dir"}
    assert {k: ctx.params[k] for k in defaults} == defaults


@pytest.mark.parametrize("args", [
    ["img", "--", "true"], ["img", "true"], ["img"], ["img", "--"], ["img", "ls", "-la"], ["img", "--", "--", "x"],
    ["--cold", "img", "true"], ["--json", "--cold", "img", "--", "sh", "-c", "exit 3"], ["--cold", "--cold", "img"],
    ["img", "--json", "true"], ["img", "--help"], ["--cold", "--", "img", "true"], ["-e", "A=1", "img", "true"],
    ["--keep", "img", "true"], ["--cold"], ["--help"], ["-", "x"],
])
def test_plain_run_splits_like_click(args: list[str]) -> None:
    """The click-free ``run`` takes only command lines click would split the same way, with
    every option it does not set at the value click gives it."""
    run_cmd = importlib.import_module("microagent.cli.cmd_run").run
    plain = plain_run(args)
    if plain is None:
        return  # click parses it
    image, command, flags = plain
    ctx = run_cmd.make_context("run", list(args), resilient_parsing=True)
    assert (ctx.params["image"], list(ctx.params["command"])) == (image, command)
    params = inspect.signature(run_oneshot).parameters
    assert set(params) - {"image", "command"} == set(ctx.params) - {"image", "command"}
    for key, param in params.items():
        if param.kind is param.KEYWORD_ONLY and key != "state_dir":
            assert ctx.params[key] == flags.get(key, param.default), key


def test_plain_run_skips_click(tmp_path: Path) -> None:
    """A plain ``run`` reaches the library without click (its error here: a bad image reference)."""
    code, loaded = probe(["run", "--cold", "--json", "Bad Ref!", "--", "true"], state_dir=tmp_path)
    assert code == "125"
    assert "microagent.cli.oneshot_run" in loaded and "microagent.workspace.oneshot" in loaded
    assert offenders(loaded, ("click", "rich", "microagent.cli.cmd_image")) == []
    # nor what only egress options or a warm start use
    assert offenders(loaded, ("microagent.egress.policy", "microagent.workspace.warm")) == []


def test_the_run_path_defines_no_dataclasses() -> None:
    """What a cold ``run`` loads before its VMM starts (the plan, a cached image, the kernel
    record, the QEMU backend) defines its records as msgspec Structs, as the wire types it
    loads anyway are: under Python 3.11 a dataclass costs about half a millisecond to create
    (its methods are compiled from source), and the some 40 there cost a run 15 ms."""
    code = ("import sys, microagent.workspace.oneshot, microagent.images.builtin, microagent.images.rootfs, "
            "microagent.kernels.store; from microagent.vmkit.dispatch import load_backend; load_backend('qemu'); "
            "print(sorted(m for m in sys.modules if m == 'dataclasses'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_help_overview_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: microagent [OPTIONS] COMMAND [ARGS]...")
    listed = [line.split()[0] for line in out.split("Commands:\n")[1].splitlines()]
    assert listed == sorted(COMMANDS)


SCRIPT = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("atexit ran\\n"))
sys.argv = ["microagent", *{argv!r}]
from microagent.cli.main import main
main()
"""


def test_the_console_script_ends_with_nothing_lost(running_workspace: tuple[Path, str]) -> None:
    """As the console script, the CLI ends without the interpreter's teardown: every byte of
    the command's output still arrives, its exit code is the process's, atexit handlers run."""
    root, name = running_workspace
    argv = ["exec", name, "--", "sh", "-c", "yes x | head -c 300000; exit 7"]
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(argv=argv)], capture_output=True,
                          env={**os.environ, "MICROAGENT_STATE_DIR": str(root)})
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert proc.stdout == b"x\n" * 150000
    assert proc.stderr.endswith(b"atexit ran\n")
