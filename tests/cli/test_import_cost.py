"""The CLI's start-up cost, counted in imported modules (no timing).

``microagent --help`` runs no command module and not click; a plain
``microagent exec NAME -- CMD`` skips click too. Each list below is a ceiling
and a set of modules that must stay off the path: a change that pulls in a
heavy module fails here, before anyone notices the CLI got slower.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from microagent.cli.exec_run import run_exec
from microagent.cli.main import COMMANDS, SUMMARIES, main, plain_exec

#: Modules never wanted on the --help or exec path.
HEAVY = ("click", "microagent.images", "microagent.kernels", "microagent.supervisors.qemu",
         "microagent.host.detect", "microagent.network.firewall", "microagent.channel.forward",
         "microagent.channel.files", "microagent.channel.router", "rich", "urllib3", "http.client",
         "email", "tarfile")
#: --help: python's own start-up plus the dispatcher.
HELP_HEAVY = HEAVY + ("microagent.errors", "microagent.workspace", "microagent.channel", "subprocess", "json",
                      "typing")
HELP_MAX_MODULES = 40
EXEC_MAX_MODULES = 180  # 208 with click in front of the same path

PROBE = """
import sys
from microagent.cli.main import main
try:
    main({argv!r})
except SystemExit:
    pass
sys.stdout.flush()
sys.stderr.write("\\n".join(sorted(sys.modules)))
"""


def modules_loaded(argv: list[str], state_dir: Path | None = None) -> set[str]:
    env = None
    if state_dir is not None:
        import os

        env = {**os.environ, "MICROAGENT_STATE_DIR": str(state_dir)}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          env=env, check=True)
    return set(proc.stderr.split("\n"))


def offenders(loaded: set[str], heavy: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded for h in heavy if m == h or m.startswith(h + "."))


def test_help_imports_only_the_dispatcher() -> None:
    loaded = modules_loaded(["--help"])
    assert offenders(loaded, HELP_HEAVY) == []
    assert len(loaded) <= HELP_MAX_MODULES, f"--help imported {len(loaded)} modules: {sorted(loaded)}"


def test_plain_exec_skips_click_and_the_heavy_library(tmp_path: Path) -> None:
    # A missing workspace takes the whole path up to the state lookup: store, manifest, errors.
    loaded = modules_loaded(["exec", "nosuch", "--", "true"], state_dir=tmp_path)
    assert "microagent.cli.exec_run" in loaded and "microagent.workspace.sessions" in loaded
    assert offenders(loaded, HEAVY) == []
    assert len(loaded) <= EXEC_MAX_MODULES, f"exec imported {len(loaded)} modules"


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


def test_help_overview_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: microagent [OPTIONS] COMMAND [ARGS]...")
    listed = [line.split()[0] for line in out.split("Commands:\n")[1].splitlines()]
    assert listed == sorted(COMMANDS)
