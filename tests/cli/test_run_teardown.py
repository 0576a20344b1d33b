"""A one-shot run from the CLI's side: its teardown answered by a forked worker,
leaving nothing behind, and a plain ``run`` loading neither click nor what it does not use.

The exec's threads end with its channel; if one is still listed when the run
sends ``kill``, the CLI is not single-threaded and runs the supervisor's
executable instead (about 100 ms more, on some runs only).  Real QEMU guests
(warm restores after the first boot, to keep it short), in a fresh interpreter
as the CLI runs, with the executable path counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.test_import_cost import PROBE as CLI_PROBE
from support import private_state_root

pytestmark = pytest.mark.vm

RUNS = 4
PROBE = """
import json, threading
from microagent.vmkit import dispatch
from microagent.workspace import oneshot, supervisor_client

executables = []
real = dispatch.call_supervisor
def counted(exe, request, **kw):
    executables.append(request.command)
    return real(exe, request, **kw)
supervisor_client.call_supervisor = counted
codes = []
for _ in range({runs}):
    outcome = oneshot.run("builtin:busybox", ["sh", "-c", "echo hi; exit 3"])
    codes.append((outcome.exit_code, bytes(outcome.result.stdout).decode()))
print(json.dumps({{"codes": codes, "executables": executables, "threads": threading.active_count()}}))
"""


def test_every_teardown_is_answered_in_process(tmp_path: Path) -> None:
    with private_state_root(tmp_path / "state") as root:
        proc = subprocess.run([sys.executable, "-c", PROBE.format(runs=RUNS)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "MICROAGENT_STATE_DIR": str(root)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        doc = json.loads(proc.stdout)
        assert doc["codes"] == [[3, "hi\n"]] * RUNS
        assert doc["executables"] == [], "a supervisor executable answered instead of a forked worker"
        assert doc["threads"] == 1, "a run left a thread behind"
        assert sorted(p.name for p in (root / "run").iterdir()) == []
        assert not any(p.name.startswith("run-") for p in (root / "workspaces").iterdir())


#: a whole plain cold run in the CLI's process (the supervisor's code included: its workers
#: are forked with it loaded); 250 now, 270 through click with the lifecycle module
RUN_MAX_MODULES = 258
#: never loaded by a plain run: click and the command's option table, rich (progress on a
#: terminal only), port publishing, the full host probe, the lifecycle module and the manifest
RUN_HEAVY = ("click", "rich", "microagent.cli.cmd_run", "microagent.cli.cmd_image", "microagent.cli.group",
             "microagent.channel.forward", "microagent.network.nat", "microagent.network.firewall",
             "microagent.workspace.lifecycle", "microagent.workspace.manifest")


def test_a_plain_cold_run_skips_click_and_what_it_does_not_use(tmp_path: Path) -> None:
    from microagent.host.detect import probe_kvm

    heavy = RUN_HEAVY if probe_kvm().kind == "hardware" else (*RUN_HEAVY, "microagent.host.firecracker_binary")
    argv = ["run", "--cold", "--json", "builtin:busybox", "--", "sh", "-c", "echo hi; exit 3"]
    with private_state_root(tmp_path / "state") as root:
        env = {**os.environ, "MICROAGENT_STATE_DIR": str(root)}
        # the first run of a state root builds the image's base disk and the initramfs: not counted
        subprocess.run([str(Path(sys.executable).parent / "microagent"), "run", "--cold", "builtin:busybox", "true"],
                       env=env, check=True, capture_output=True, timeout=300)
        proc = subprocess.run([sys.executable, "-c", CLI_PROBE.format(argv=argv)], capture_output=True, text=True,
                              timeout=300, env=env)
        code, _, rest = proc.stderr.rpartition("exit=")[2].partition("\n")
        loaded = set(rest.split("\n"))
        assert code == "3", proc.stderr[-3000:]
        doc = json.loads(proc.stdout)
        assert doc["result"]["stdout"] == "hi\n" and not doc["warm"]
        assert sorted(m for m in loaded for h in heavy if m == h or m.startswith(h + ".")) == []
        assert len(loaded) <= RUN_MAX_MODULES, f"a plain run imported {len(loaded)} modules: {sorted(loaded)}"
        assert list((root / "run").iterdir()) == []
