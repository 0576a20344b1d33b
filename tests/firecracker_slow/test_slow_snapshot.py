"""Firecracker snapshots with a real guest, through the slow lane (KVM's instruction emulator).

One boot, then: ``snapshot create`` of the running workspace, an in-place
restore (``start --from-snapshot``) and a fork (``create --from-snapshot``),
all through the CLI and the Firecracker supervisor: ``PUT /snapshot/create``
into the snapshot directory, a new firecracker loading it with
``PUT /snapshot/load``, the channel helper reconnecting over vsock (the
guest's connection was reset by the restore, its listener survived) and
guest init making the guest whole (clock, entropy, hostname, generation).
A snapshot of a paused workspace follows.  Firecracker resets the guest's
vsock connections at every snapshot, also in the VM it was taken of: the
supervisor gives that workspace a new channel helper (at once, or at resume).
Each step's duration is printed.
"""

from __future__ import annotations

import json
import time

import pytest

from firecracker_slow.slow_state import SlowState, report
from firecracker_slow.test_slow_lane import BOOT_TIMEOUT_S, STEP_TIMEOUT_S, Steps, boot, cli_json, logs_tail

RANDOM = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"


def out(state: SlowState, name: str, script: str) -> str:
    proc = state.cli("exec", name, "--", "sh", "-c", script, timeout=STEP_TIMEOUT_S)
    assert proc.returncode == 0, (script, proc.stdout, proc.stderr, logs_tail(state, name))
    return proc.stdout.decode().strip()


def restored(state: SlowState, *args: str) -> dict[str, object]:
    timeout = ("--boot-timeout", str(BOOT_TIMEOUT_S)) if args[0] == "start" else ()  # create: 60 s
    proc = state.cli(*args, *timeout, "--json", timeout=BOOT_TIMEOUT_S + 60)
    name = args[1]
    assert proc.returncode == 0, (args, proc.stdout.decode(), proc.stderr.decode(), logs_tail(state, name))
    doc: dict[str, object] = json.loads(proc.stdout)
    assert doc["state"] == "running", doc
    return doc


@pytest.mark.timeout(1500)
def test_firecracker_snapshot_restore_and_fork_through_the_slow_lane(fc_slow_state: SlowState) -> None:
    state, steps = fc_slow_state, Steps()
    try:
        _walk(state, steps)
    finally:
        for name in ("fcfork", "fcsnap"):  # the fixture finds firecracker only by its arguments: none here
            state.cli("kill", name)
        report(f"firecracker slow lane, snapshots: {steps.total():.0f}s in all; "
               + ", ".join(f"{what} {secs:.1f}s" for what, secs in steps.rows))


def _walk(state: SlowState, steps: Steps) -> None:
    cli_json(state, "create", "fcsnap", "--backend", "firecracker", "--profile", "tiny")
    boot(state, "fcsnap")
    steps.done("create, boot")
    out(state, "fcsnap", "echo kept > /root/before")
    steps.done("exec (write /root/before)")

    doc = cli_json(state, "snapshot", "create", "fcsnap", "t1")
    assert doc["vmm"] == "firecracker", doc
    manifest = json.loads((state.root / "workspaces" / "fcsnap" / "snapshots" / "t1" / "snapshot.json").read_text())
    assert manifest["vmmVersion"] == "Firecracker v1.12.1" and manifest["backend"] == "firecracker", manifest
    assert cli_json(state, "status", "fcsnap")["state"] == "running"  # the snapshot left it running
    steps.done("snapshot create")
    out(state, "fcsnap", "echo later > /root/after && sync")
    cli_json(state, "kill", "fcsnap")

    # --- in place: the snapshot's disk and memory; what came after is gone; the clock is current
    restored(state, "start", "fcsnap", "--from-snapshot", "t1")
    steps.done("restore in place (start --from-snapshot -> guest answered)")
    assert out(state, "fcsnap", "cat /root/before") == "kept"
    assert out(state, "fcsnap", "ls /root") == "before"
    guest_now = int(out(state, "fcsnap", "date +%s"))
    assert abs(guest_now - time.time()) < 30, guest_now  # set from the host (the emulator is slow)
    assert out(state, "fcsnap", "hostname") == "fcsnap"
    steps.done("exec after restore x4")

    # --- a fork: its own disk, private memory, its own name; its writes stay its own
    restored(state, "create", "fcfork", "--from-snapshot", "fcsnap:t1")
    steps.done("fork (create --from-snapshot -> guest answered)")
    assert out(state, "fcfork", "cat /root/before") == "kept"
    assert out(state, "fcfork", "hostname") == "fcfork"
    assert out(state, "fcfork", RANDOM) != out(state, "fcsnap", RANDOM)  # two restores, two random pools
    out(state, "fcfork", "echo mine > /root/fork-file && sync")
    assert out(state, "fcsnap", "ls /root") == "before"
    assert out(state, "fcfork", "ls /root").split() == ["before", "fork-file"]
    steps.done("exec in fork and original")

    # --- a snapshot of a paused workspace: it stays paused; after resume a new helper reaches the guest
    assert cli_json(state, "pause", "fcsnap")["state"] == "paused"
    cli_json(state, "snapshot", "create", "fcsnap", "t2")
    assert cli_json(state, "status", "fcsnap")["state"] == "paused"
    assert cli_json(state, "resume", "fcsnap")["state"] == "running"
    assert out(state, "fcsnap", "cat /root/before") == "kept"
    steps.done("pause, snapshot create, resume, exec")

    for name in ("fcfork", "fcsnap"):
        cli_json(state, "kill", name)
        assert cli_json(state, "delete", name)["deleted"] is True
