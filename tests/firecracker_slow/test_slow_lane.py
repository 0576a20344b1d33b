"""The Firecracker backend's whole guest path, on a host without hardware KVM (the slow lane).

The real product path: the ``microagent`` CLI, the Firecracker supervisor,
the pinned ``firecracker`` binary, the static guest init, the channel over
vsock (Firecracker's host UDS and its ``CONNECT 1024`` handshake).  Only the
kernel (``harness/``: Debian's 6.12 source, tinyconfig, emulator
workarounds), a CPU template and extra boot arguments differ, through the
test-only ``MICROAGENT_TEST_FIRECRACKER_SLOW_LANE``.  Every guest instruction
is emulated by KVM (about 1.5 M instructions/s), so one boot takes about 30 s:
one workspace walks create → start → exec → cp in/out → connect --send →
pause/resume → halt → start → quarantine → kill → delete in two boots; one
more boot covers ``--network user`` and ``-p``, one more ``run``.  Each test's
steps and durations are printed (``-s``) and repeated in the run's summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from support_netns import WORLD_ADDRESS, Netns, host_and_world, sh

from firecracker_slow.slow_state import SlowState, report

#: a boot answers the channel after 25-35 s here; generous for a busy machine
BOOT_TIMEOUT_S = 600
STEP_TIMEOUT_S = 300


class Steps:
    """Times each step and prints the table at the end."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = self.started
        self.rows: list[tuple[str, float]] = []

    def done(self, what: str) -> None:
        now = time.monotonic()
        self.rows.append((what, now - self.last))
        print(f"  [{now - self.started:7.1f}s] {what}: {now - self.last:.1f}s", flush=True)
        self.last = now

    def total(self) -> float:
        return time.monotonic() - self.started


def cli_json(state: SlowState, *args: str, expect: int = 0, timeout: float = STEP_TIMEOUT_S) -> dict[str, Any]:
    argv = list(args)
    at = argv.index("--") if "--" in argv else len(argv)
    proc = state.cli(*argv[:at], "--json", *argv[at:], timeout=timeout)
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def logs_tail(state: SlowState, name: str) -> str:
    """The end of the guest's serial console and of firecracker's log: what blocked a boot."""
    out = []
    for log in ("serial.log", "vmm.log"):
        try:
            lines = (state.root / "run" / name / log).read_text(errors="replace").splitlines()[-25:]
        except OSError:
            lines = ["(absent)"]
        out.append(f"--- {log}:\n" + "\n".join(lines))
    return "\n".join(out)


def boot(state: SlowState, name: str) -> dict[str, Any]:
    """``start`` with the long boot timeout; a failure shows the serial console and firecracker's log."""
    proc = state.cli("start", name, "--boot-timeout", str(BOOT_TIMEOUT_S), "--json", timeout=BOOT_TIMEOUT_S + 60)
    assert proc.returncode == 0, (proc.stdout.decode(), proc.stderr.decode(), logs_tail(state, name))
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc["state"] == "running", (doc, logs_tail(state, name))
    return doc


@pytest.mark.timeout(1800)
def test_firecracker_guest_path_through_the_slow_lane(fc_slow_state: SlowState) -> None:
    state, name = fc_slow_state, "fcslow"
    steps = Steps()
    try:
        _walk(state, name, steps)
    finally:
        report(f"firecracker slow lane, guest path: {steps.total():.0f}s in all; "
               + ", ".join(f"{what} {secs:.0f}s" for what, secs in steps.rows))


def _walk(state: SlowState, name: str, steps: Steps) -> None:
    # --- create: prepared with the slow-lane kernel as the firecracker kernel
    doc = cli_json(state, "create", name, "--backend", "firecracker", "--profile", "tiny", "-e", "GREETING=hello")
    assert doc["state"] == "prepared" and doc["workspace"]["backend"] == "firecracker", doc
    steps.done("create")

    # --- start: the guest boots and the channel handshake (vsock via firecracker's UDS CONNECT) answers
    doc = boot(state, name)
    pid = doc["pid"]
    assert pid_alive(pid)
    assert all(doc["readiness"][k]["ready"] for k in ("guestReady", "execReady", "shellReady")), doc
    runtime = state.root / "run" / name
    fc_config = json.loads((runtime / "firecracker.json").read_text())
    assert fc_config["cpu-config"].endswith("cpu-template.json")
    assert "clearcpuid=xsave,smap,popcnt acpi=off" in fc_config["boot-source"]["boot_args"]
    assert "microagent.channel=vsock:1024" in fc_config["boot-source"]["boot_args"]
    status = cli_json(state, "status", name)
    assert status["backend"] == "firecracker" and status["state"] == "running" and status["pid"] == pid
    steps.done("start (boot to guest init and vsock handshake)")

    # --- exec: environment, both streams, exit code
    proc = state.cli("exec", name, "-e", "X=1", "--workdir", "/tmp", "--", "sh", "-c",
                     'echo "$GREETING $X $(pwd) $(hostname)"; echo oops >&2; exit 5', timeout=STEP_TIMEOUT_S)
    assert proc.returncode == 5, (proc.stdout, proc.stderr)
    assert proc.stdout == f"hello 1 /tmp {name}\n".encode() and proc.stderr == b"oops\n"
    proc = state.cli("exec", "-i", name, "--", "sh", "-c", "tr a-z A-Z", input=b"piped input\n",
                     timeout=STEP_TIMEOUT_S)
    assert proc.returncode == 0 and proc.stdout == b"PIPED INPUT\n", (proc.stdout, proc.stderr)
    steps.done("exec x2 (exit code, stdout/stderr, stdin)")

    # --- cp in and out
    local = state.root.parent / "cp-in.bin"
    payload = os.urandom(100_000)
    local.write_bytes(payload)
    local.chmod(0o640)
    doc = cli_json(state, "cp", str(local), f"{name}:/root/")
    assert doc["destination"] == "/root/cp-in.bin" and doc["bytes"] == len(payload)
    proc = state.cli("exec", name, "--", "md5sum", "/root/cp-in.bin", timeout=STEP_TIMEOUT_S)
    assert proc.stdout.decode().split()[:1] == [hashlib.md5(payload).hexdigest()], (proc.stdout, proc.stderr)
    out = state.root.parent / "cp-out.bin"
    doc = cli_json(state, "cp", f"{name}:/root/cp-in.bin", str(out))
    assert out.read_bytes() == payload and doc["direction"] == "out"
    steps.done("cp in, md5sum, cp out")

    # --- connect --send: a line in the user's shell on a pty
    proc = state.cli("connect", name, "--send", 'echo "tty: $(tty)"; echo "$GREETING"; exit 7',
                     timeout=STEP_TIMEOUT_S)
    assert proc.returncode == 7, (proc.stdout, proc.stderr)
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("tty: /dev/pts/") and lines[1] == "hello", lines
    steps.done("connect --send")

    # --- pause / resume through firecracker's API, with a live guest: the guest continues where it was
    assert cli_json(state, "pause", name)["state"] == "paused"
    assert cli_json(state, "status", name)["state"] == "paused"
    assert cli_json(state, "resume", name)["state"] == "running"
    proc = state.cli("exec", name, "--", "cat", "/root/cp-in.bin", timeout=STEP_TIMEOUT_S)
    assert proc.returncode == 0 and proc.stdout == payload
    steps.done("pause, resume, exec")

    # --- halt: a clean power-off (guest reboot -> firecracker exits); the disk keeps what was written
    assert state.cli("exec", name, "--", "sh", "-c", "echo persisted > /root/keep.txt; sync",
                     timeout=STEP_TIMEOUT_S).returncode == 0
    doc = cli_json(state, "halt", name)
    assert doc["state"] == "halted" and not pid_alive(pid), doc
    events = cli_json(state, "events", name)["events"]
    assert events[-1]["state"] == "halted", events[-3:]
    steps.done("halt")

    # --- start again: the file survived the power-off
    doc = boot(state, name)
    assert doc["previousState"] == "halted", doc
    pid = doc["pid"]
    steps.done("start again")
    proc = state.cli("exec", name, "--", "cat", "/root/keep.txt", timeout=STEP_TIMEOUT_S)
    assert proc.stdout == b"persisted\n", (proc.stdout, proc.stderr)
    steps.done("exec after restart")

    # --- quarantine: the channel is cut (exec refused), the VMM and its PID kept
    doc = cli_json(state, "quarantine", name)
    assert doc["state"] == "quarantined" and doc["pid"] == pid and pid_alive(pid)
    refused = cli_json(state, "exec", name, "--", "true", expect=125)
    assert refused["error"]["kind"] == "conflict" and "quarantined" in refused["error"]["message"]
    assert not (state.root / "run" / name / "vsock.sock").exists()
    steps.done("quarantine")

    # --- kill, then delete: nothing left
    doc = cli_json(state, "kill", name)
    assert doc["state"] == "stopped"
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    doc = cli_json(state, "delete", name)
    assert doc["deleted"] is True
    assert not (state.root / "run" / name).exists() and not (state.root / "workspaces" / name).exists()
    steps.done("kill, delete")


@pytest.fixture
def namespaces() -> Iterator[tuple[Netns, Netns]]:
    """``host`` (where microagent runs, a default route to ``world``) and ``world``, joined by a veth."""
    with host_and_world("fs", forward=False) as (host, world, _):
        yield host, world


@pytest.mark.timeout(1200)
def test_firecracker_user_network_and_publish_through_the_slow_lane(
        fc_slow_state: SlowState, namespaces: tuple[Netns, Netns]) -> None:
    """``--network user`` (pasta, firecracker inside the workspace's namespace) and ``-p``: one boot.

    The CLI runs under ``nsenter`` in a test namespace whose only route leads to
    another test namespace; the guest reaches a server there from the host's
    own address, the host's loopback through 10.0.2.2 (opted in), and a guest
    server is published on the host namespace's loopback.
    """
    host, world = namespaces
    state = dataclasses.replace(fc_slow_state, prefix=("nsenter", f"--net=/run/netns/{host.name}", "--"))
    name, steps = "fcnet", Steps()
    near, far = host.serve("127.0.0.1", 8704), world.serve(WORLD_ADDRESS, 8705)
    try:
        doc = cli_json(state, "create", name, "--backend", "firecracker", "--profile", "tiny", "--network", "user",
                       "--allow-host-loopback", "-p", "127.0.0.1:8088:8080")
        assert doc["state"] == "prepared"
        boot(state, name)
        net = json.loads((state.root / "run" / name / "network.json").read_text())
        assert net["provider"] == "pasta", net
        fc_config = json.loads((state.root / "run" / name / "firecracker.json").read_text())
        assert [i["host_dev_name"] for i in fc_config["network-interfaces"]] == ["vmtap0"]
        steps.done("create, start with --network user -p")

        proc = state.cli("exec", name, "--", "sh", "-c", "ip -4 addr show eth0; wget -qO- http://10.0.2.2:8704/; "
                         "echo; wget -qO- http://198.51.100.2:8705/", timeout=STEP_TIMEOUT_S)
        out = proc.stdout.decode()
        assert proc.returncode == 0, (out, proc.stderr)
        assert "inet 10.0.2.15/24" in out
        assert "hello from 127.0.0.1" in out  # the gateway reaches the host's loopback: opted in
        assert "hello from 198.51.100.1" in out  # egress leaves from the host's own address
        steps.done("guest -> host loopback and -> another namespace over pasta")

        assert state.cli("exec", name, "--", "sh", "-c", "mkdir -p /www && echo published-ok > /www/index.html "
                         "&& httpd -p 8080 -h /www", timeout=STEP_TIMEOUT_S).returncode == 0
        fetch = ("import urllib.request; "
                 "print(urllib.request.urlopen('http://127.0.0.1:8088/index.html', timeout=30).read().decode())")
        fetched = host.run(sys.executable, "-c", fetch, timeout=120)
        assert fetched.stdout.strip() == "published-ok", fetched
        steps.done("-p: the guest's httpd through 127.0.0.1:8088")

        assert cli_json(state, "kill", name)["state"] == "stopped"
        assert cli_json(state, "delete", name)["deleted"] is True
        assert net["namespace"] not in sh("ip", "netns", "list")
        steps.done("kill, delete")
    finally:
        report(f"firecracker slow lane, network: {steps.total():.0f}s in all; "
               + ", ".join(f"{what} {secs:.0f}s" for what, secs in steps.rows))
        state.cli("kill", name)
        state.cli("delete", name)
        near.kill()
        far.kill()


#: The lane's first test (conftest.py orders it first) boots with this timeout: ten times the
#: ~30 s a boot takes where the suite was sized. A host whose KVM emulator cannot boot the
#: lane within it is too slow to test the lane on; the test skips and says so.
PROBE_BOOT_TIMEOUT_S = 300


@pytest.mark.timeout(PROBE_BOOT_TIMEOUT_S + 300)
def test_firecracker_one_shot_run_through_the_slow_lane(fc_slow_state: SlowState) -> None:
    """``run``: boot, one command (its streams and exit code), power-off, nothing left."""
    started = time.monotonic()
    # no catch of the CLI's own timeout: it gives up at the boot timeout, and one still
    # running 120 s later is a failure, whatever the host's speed
    proc = fc_slow_state.cli("run", "--backend", "firecracker", "--boot-timeout", str(PROBE_BOOT_TIMEOUT_S),
                             "--json", "builtin:busybox", "--", "sh", "-c", 'uname -r; echo e >&2; exit 3',
                             timeout=PROBE_BOOT_TIMEOUT_S + 120)
    report(f"firecracker slow lane, one-shot run: {time.monotonic() - started:.0f}s")
    if proc.returncode != 3 and b"did not answer within the boot timeout" in proc.stdout:
        tail = json.loads(proc.stdout)["error"]["message"].partition("serial log tail:")[2].strip()
        # guest init logging anything means the kernel got there: a hang of ours, not a slow host
        assert "microagent-init" not in tail, tail
        pytest.skip(f"this host's KVM emulator did not boot the slow lane's kernel to guest init within "
                    f"{PROBE_BOOT_TIMEOUT_S} s (about 30 s where the suite was sized; 200-230 s on the slowest "
                    f"host seen): too slow to test the Firecracker guest path here; serial log tail: "
                    f"{tail[-300:] or '(empty)'}")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["backend"] == "firecracker"
    result = doc["result"]
    assert result["status"] == "exited" and result["exit_code"] == 3
    assert result["stdout"].startswith("6.12.") and result["stderr"] == "e\n"  # the slow-lane kernel
    assert not (fc_slow_state.root / "run" / doc["workspace"]).exists(), "one-shot state must be deleted"
