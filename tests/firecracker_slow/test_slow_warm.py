"""Firecracker's warm path with a real guest, through the slow lane (KVM's instruction emulator).

``run`` of one image three times and once more after damage: the first boots
(about 30 s here) and saves the boot snapshot once the guest is ready; the
next two restore it (a new firecracker loading the entry's state file, its
memory file mapped private and its disk copied for the run) and run their
commands with their own env and workdir, a current clock and their own
random numbers.  Then the entry's state file is replaced by junk that its
manifest vouches for (damage the host-side checks cannot see): firecracker
refuses the load, the entry is removed and the run boots cold and saves a
new one.  The first ``start`` of a fresh workspace restores the boot
snapshot its image's first workspace saved, in place (a workspace's entry
is not a run's: its boot config bakes in the image's env).  Each step's
duration is printed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from firecracker_slow.slow_state import SlowState, report
from firecracker_slow.test_slow_lane import BOOT_TIMEOUT_S, STEP_TIMEOUT_S, Steps, boot, cli_json

RANDOM = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
SCRIPT = f'echo "$X $(pwd)"; date +%s; {RANDOM}; echo; exit 4'


def run(state: SlowState, *args: str) -> tuple[dict[str, Any], list[str]]:
    """``run --json`` of busybox on firecracker (tiny's memory: the snapshot writes all of it)."""
    proc = state.cli("run", "--backend", "firecracker", "--memory", "256", "--boot-timeout", str(BOOT_TIMEOUT_S),
                     "--json", *args, "builtin:busybox", "--", "sh", "-c", SCRIPT, timeout=BOOT_TIMEOUT_S + 180)
    assert proc.returncode == 4, (proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc["backend"] == "firecracker" and doc["result"]["exit_code"] == 4, doc
    if "--keep" not in args:
        assert not (state.root / "run" / doc["workspace"]).exists(), "one-shot state must be deleted"
    lines = doc["result"]["stdout"].splitlines()
    assert lines[0] == "warm /tmp" and len(lines) == 3 and len(lines[2]) == 64, doc["result"]
    if doc["warm"]:
        assert abs(int(lines[1]) - time.time()) < 30, lines  # the host's clock, not the snapshot's
    return doc, lines


def entries(state: SlowState) -> list[Path]:
    return sorted(p for p in (state.root / "images" / "warm").glob("*/*")
                  if p.is_dir() and not p.name.startswith("."))


@pytest.mark.timeout(1500)
def test_firecracker_warm_run_through_the_slow_lane(fc_slow_state: SlowState) -> None:
    state, steps = fc_slow_state, Steps()
    try:
        _walk(state, steps)
    finally:
        report(f"firecracker slow lane, warm run: {steps.total():.0f}s in all; "
               + ", ".join(f"{what} {secs:.1f}s" for what, secs in steps.rows))


def _walk(state: SlowState, steps: Steps) -> None:
    env = ("-e", "X=warm", "--workdir", "/tmp")
    doc, _ = run(state, *env)
    assert doc["warm"] is False and "boot" in doc["timings"] and "save_warm" in doc["timings"], doc
    [entry] = entries(state)
    manifest = json.loads((entry / "snapshot.json").read_text())
    assert manifest["backend"] == "firecracker" and manifest["vmmVersion"] == "Firecracker v1.12.1", manifest
    assert (entry / "memory").stat().st_size == 256 << 20
    memory_id = (entry / "memory").stat().st_mtime_ns
    steps.done(f"cold run (boot {doc['timings']['boot']:.1f}s, save {doc['timings']['save_warm']:.1f}s)")

    first, first_lines = run(state, *env)
    assert first["warm"] is True and "restore" in first["timings"] and "boot" not in first["timings"], first
    steps.done(f"warm run 1 (restore {first['timings']['restore']:.1f}s)")
    second, second_lines = run(state, *env)
    assert second["warm"] is True, (second, entries(state))  # a rebuilt guest init misses: a new key
    assert second_lines[2] != first_lines[2]  # each restore's random pool reseeded from the host
    assert entries(state) == [entry] and (entry / "memory").stat().st_mtime_ns == memory_id  # never written
    steps.done(f"warm run 2 (restore {second['timings']['restore']:.1f}s)")


    # junk that the manifest vouches for: only firecracker can tell; the run boots cold instead
    # (kept, so that the failed load's firecracker log can be read: the cold boot rotated it)
    junk = b"not a firecracker state file\n" * 100
    (entry / "state").write_bytes(junk)
    manifest["files"]["state"]["sha256"] = "sha256:" + hashlib.sha256(junk).hexdigest()
    (entry / "snapshot.json").write_text(json.dumps(manifest))
    doc, _ = run(state, *env, "--keep")
    assert doc["warm"] is False and "boot" in doc["timings"], doc
    refused = (state.root / "run" / doc["workspace"] / "vmm.log.1").read_text(errors="replace")
    assert "Load snapshot error" in refused, refused[-2000:]
    [entry] = entries(state)  # saved anew
    assert (entry / "state").read_bytes() != junk
    assert cli_json(state, "delete", doc["workspace"])["deleted"] is True
    steps.done("damaged entry: firecracker refused it, cold run, saved anew")


def out(state: SlowState, name: str, script: str) -> str:
    proc = state.cli("exec", name, "--", "sh", "-c", script, timeout=STEP_TIMEOUT_S)
    assert proc.returncode == 0, (script, proc.stdout, proc.stderr)
    return proc.stdout.decode().strip()


@pytest.mark.timeout(1200)
def test_firecracker_warm_first_start_through_the_slow_lane(fc_slow_state: SlowState) -> None:
    state, steps = fc_slow_state, Steps()
    names = ("fcw1", "fcw2")
    try:
        for name in names:
            cli_json(state, "create", name, "--backend", "firecracker", "--profile", "tiny")
        assert boot(state, "fcw1")["runtime"]["warm"] is False  # booted, saved the entry
        steps.done("create x2, cold first start of fcw1 (boot, save)")
        doc = boot(state, "fcw2")
        assert doc["runtime"]["warm"] is True, (doc, entries(state))
        steps.done("warm first start of fcw2 (restore in place)")
        assert out(state, "fcw2", "hostname") == "fcw2"
        assert abs(int(out(state, "fcw2", "date +%s")) - time.time()) < 30
        assert out(state, "fcw2", RANDOM) != out(state, "fcw1", RANDOM)
        out(state, "fcw2", "echo mine > /root/f && sync")
        assert state.cli("exec", "fcw1", "--", "test", "-e", "/root/f", timeout=STEP_TIMEOUT_S).returncode == 1
        steps.done("exec: hostname, clock, random, its own disk")
        # its memory is the entry's file mapped copy-on-write: a snapshot writes its own
        cli_json(state, "snapshot", "create", "fcw2", "later")
        assert out(state, "fcw2", "cat /root/f") == "mine"
        steps.done("snapshot create of the warm-started workspace, exec")
    finally:
        for name in names:
            state.cli("kill", name)
        report(f"firecracker slow lane, warm first start: {steps.total():.0f}s in all; "
               + ", ".join(f"{what} {secs:.1f}s" for what, secs in steps.rows))
    for name in names:
        assert cli_json(state, "delete", name)["deleted"] is True
