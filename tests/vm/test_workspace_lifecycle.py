"""Named workspaces through their whole lifecycle, booted for real under QEMU.

Boots are the cost here (about 4 s each), so each test walks one workspace
through many steps: the first through create → start → exec ×3 → cp →
connect --send → halt → start → quarantine → kill → delete, the second
through delete-refusal → stop → start → kill → delete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(*args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([MICROAGENT, *args], capture_output=True, input=input, timeout=timeout)


def cli_json(*args: str, expect: int = 0, **kw: Any) -> dict[str, Any]:
    proc = cli(*args, "--json", **kw) if "--" not in args else cli(
        *args[: args.index("--")], "--json", *args[args.index("--"):], **kw)
    assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def pid_alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def leftovers(root: Path, name: str) -> list[str]:
    """Processes (VMM, channel helper) still mentioning this workspace's paths."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    needles = (str(root / "workspaces" / name) + "/", str(root / "run" / name) + "/", f"{root}/run/{name} ")
    return [line for line in out.splitlines() if any(n in line + " " for n in needles)
            and "pytest" not in line]


def assert_gone(root: Path, name: str) -> None:
    assert not (root / "run" / name).exists(), "runtime directory (sockets, logs) left behind"
    assert not (root / "workspaces" / name).exists(), "disk/manifest left behind"
    deadline = time.monotonic() + 5
    while leftovers(root, name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(root, name) == []


def test_full_lifecycle(vm_state: Path) -> None:
    name = "life1"
    # --- create: prepared, nothing booted
    doc = cli_json("create", name, "--profile", "tiny", "-e", "GREETING=hello")
    assert doc["state"] == "prepared"
    ws = doc["workspace"]
    assert ws["resources"] == {"memoryMiB": 256, "cpuCount": 1, "diskSizeMiB": 512}
    assert ws["image"]["ref"] == "builtin:busybox" and ws["image"]["digest"].startswith("sha256:")
    assert set(ws["verification"]) == {"kernel", "rootfsBase", "init"}
    assert (vm_state / "workspaces" / name / "workspace.json").is_file()
    assert leftovers(vm_state, name) == []
    clash = cli_json("create", name, expect=1)
    assert clash["error"]["kind"] == "conflict" and "already exists" in clash["error"]["message"]

    # --- start: running and ready
    doc = cli_json("start", name)
    assert doc["state"] == "running" and doc["previousState"] == "prepared"
    pid = doc["pid"]
    assert isinstance(pid, int) and pid_alive(pid)
    assert all(doc["readiness"][k]["ready"] for k in ("guestReady", "execReady", "shellReady"))
    status = cli_json("status", name)
    assert status["state"] == "running" and status["pid"] == pid and status["backend"] == "qemu"
    assert status["verification"]["ok"] is True and status["verification"]["divergence"] == []
    assert status["disk"]["path"].endswith(f"workspaces/{name}/rootfs.ext4")
    assert status["readiness"]["execReady"]["ready"] is True
    assert [w["name"] for w in cli_json("ps")["workspaces"]] == [name]

    # --- exec 1: env from create and from -e, streams and exit code
    proc = cli("exec", name, "-e", "X=1", "--workdir", "/tmp", "--", "sh", "-c",
               'echo "$GREETING $X $(pwd) $(hostname)"; echo oops >&2; exit 5')
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout == f"hello 1 /tmp {name}\n".encode() and proc.stderr == b"oops\n"

    # --- exec 2: stdin
    proc = cli("exec", "-i", name, "--", "sh", "-c", "tr a-z A-Z; echo end", input=b"piped input\n")
    assert proc.returncode == 0 and proc.stdout == b"PIPED INPUT\nend\n"

    # --- exec 3: a concurrent pair, from threads of one SDK process (one shared connection)
    import microagent

    sdk_ws = microagent.Workspace.open(name, state_dir=vm_state)
    results: dict[int, Any] = {}

    def sdk_run(i: int) -> None:
        results[i] = sdk_ws.exec(["sh", "-c", f"echo start{i} > /tmp/c{i}; sleep 2; ls /tmp; echo end{i}"])

    threads = [threading.Thread(target=sdk_run, args=(i,)) for i in (1, 2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    for i in (1, 2):
        assert results[i].exit_code == 0
        # each saw the other's file: they ran at the same time
        assert b"c1" in results[i].stdout and b"c2" in results[i].stdout
    assert elapsed < 3.8, f"the pair took {elapsed:.1f}s: not concurrent"
    sdk_ws.close()

    # ... and a concurrent pair of CLI processes: needs the multi-client channel helper
    if (vm_state / "run" / name / "control.sock").exists():
        procs = [subprocess.Popen([MICROAGENT, "exec", name, "--", "sh", "-c",
                                   f"touch /tmp/p{i}; sleep 2; ls /tmp"], stdout=subprocess.PIPE)
                 for i in (1, 2)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        assert all(b"p1" in o and b"p2" in o for o in outs)
    else:
        print("control.sock absent: concurrent CLI exec pair skipped (needs the channel helper)")

    # --- cp in and out
    local = vm_state / "cp-in.bin"
    payload = os.urandom(300_000)
    local.write_bytes(payload)
    local.chmod(0o640)
    doc = cli_json("cp", str(local), f"{name}:/root/")
    assert doc["destination"] == "/root/cp-in.bin" and doc["bytes"] == len(payload)
    proc = cli("exec", name, "--", "sh", "-c", "stat -c %a /root/cp-in.bin; md5sum /root/cp-in.bin")
    import hashlib

    assert proc.stdout.decode().split()[:2] == ["640", hashlib.md5(payload).hexdigest()]
    out = vm_state / "cp-out.bin"
    doc = cli_json("cp", f"{name}:/root/cp-in.bin", str(out))
    assert out.read_bytes() == payload and doc["direction"] == "out"
    missing = cli_json("cp", f"{name}:/no/such/file", str(out), expect=1)
    assert missing["error"]["kind"] == "not_found"

    # --- connect --send: a line in the user's shell on a pty
    proc = cli("connect", name, "--send", 'echo "tty: $(tty)"; echo "$GREETING"; exit 7')
    assert proc.returncode == 7, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("tty: /dev/pts/") and lines[1] == "hello" and "\r" not in proc.stdout.decode()
    proc = cli("connect", name, "--send", "sleep 30", "--timeout", "1")
    assert proc.returncode == 124

    # --- halt: clean shutdown; the disk keeps what was written
    assert cli("exec", name, "--", "sh", "-c", "echo persisted > /root/keep.txt").returncode == 0
    doc = cli_json("halt", name)
    assert doc["state"] == "halted" and not pid_alive(pid)
    refused = cli_json("exec", name, "--", "true", expect=125)
    assert refused["error"]["kind"] == "conflict" and "halted" in refused["error"]["message"]
    assert leftovers(vm_state, name) == []

    # --- start again: the file survived
    doc = cli_json("start", name)
    assert doc["previousState"] == "halted"
    pid = doc["pid"]
    assert cli("exec", name, "--", "cat", "/root/keep.txt").stdout == b"persisted\n"

    # --- quarantine: exec/connect/start refused, the VMM and its PID kept
    doc = cli_json("quarantine", name)
    assert doc["state"] == "quarantined" and doc["pid"] == pid
    for args in (("exec", name, "--", "true"), ("connect", name, "--send", "true"), ("start", name)):
        expect = 125 if args[0] == "exec" else 1
        refused = cli_json(*args, expect=expect)
        assert refused["error"]["kind"] == "conflict", args
        assert "quarantined" in refused["error"]["message"], args
    assert pid_alive(pid)
    assert not (vm_state / "run" / name / "channel.sock").exists() and not (vm_state / "run" / name / "control.sock").exists()
    status = cli_json("status", name)
    assert status["state"] == "quarantined" and status["pid"] == pid and status["alive"] is True
    refused = cli_json("delete", name, expect=1)
    assert refused["error"]["kind"] == "conflict"

    # --- kill, then delete: nothing left
    doc = cli_json("kill", name)
    assert doc["state"] == "stopped"
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    states = [e["state"] for e in cli_json("events", name)["events"]]
    assert states[0] == "prepared" and "halted" in states and states[-2:] == ["quarantined", "stopped"]
    assert b"microagent-init" in cli("logs", name).stdout
    doc = cli_json("delete", name)
    assert doc["deleted"] is True
    assert_gone(vm_state, name)
    assert cli_json("delete", name)["deleted"] is False


def test_stop_kill_and_delete_refusal(vm_state: Path) -> None:
    name = "life2"
    cli_json("create", name, "--profile", "tiny")
    pid = cli_json("start", name)["pid"]

    refused = cli_json("delete", name, expect=1)
    assert refused["error"]["kind"] == "conflict" and "running" in refused["error"]["message"]
    assert "delete -f" in refused["error"]["remediation"]
    assert pid_alive(pid)
    again = cli_json("start", name, expect=1)
    assert again["error"]["kind"] == "conflict" and "running" in again["error"]["message"]

    doc = cli_json("stop", name)
    assert doc["state"] == "stopped" and doc["detail"] == "SIGTERM"
    assert not pid_alive(pid)
    refused = cli_json("kill", name, expect=1)
    assert refused["error"]["kind"] == "conflict" and "stopped" in refused["error"]["message"]
    assert leftovers(vm_state, name) == []

    pid = cli_json("start", name)["pid"]
    assert cli("exec", name, "--", "true").returncode == 0
    # a VMM that dies while nobody watches shows failed, never a stale running
    os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = cli_json("status", name)
    assert status["state"] == "failed" and "exited while nobody watched" in status["detail"]
    waited = cli_json("wait", name, expect=1)
    assert waited["state"] == "failed"

    pid = cli_json("start", name)["pid"]
    assert cli_json("start", name, "--wait", expect=1)["error"]["kind"] == "conflict"
    doc = cli_json("delete", name, "-f")
    assert doc == {"schemaVersion": 1, "ok": True, "name": name, "deleted": True, "killed": True,
                   "previousState": "running"}
    assert not pid_alive(pid)
    assert_gone(vm_state, name)


def test_a_held_connection_sees_a_pause_made_elsewhere(vm_state: Path) -> None:
    """The SDK keeps one channel connection per Workspace and checks only the recorded state
    before each exec on it: a pause by another process still refuses the next exec at once
    (its vcpus stopped, the exec would otherwise hang), and after resume the same object runs again."""
    import microagent
    from microagent.errors import Conflict

    name = "held"
    ws = microagent.Workspace.create(name, profile="tiny")
    try:
        assert ws.exec(["echo", "one"]).stdout == b"one\n"  # the connection is held from here
        assert cli_json("pause", name)["state"] == "paused"
        t0 = time.monotonic()
        try:
            ws.exec(["true"])
            raise AssertionError("exec on a paused workspace was not refused")
        except Conflict as exc:
            assert "paused" in str(exc) and time.monotonic() - t0 < 5
        assert cli_json("resume", name)["state"] == "running"
        assert ws.exec(["echo", "two"]).stdout == b"two\n"
    finally:
        ws.close()
        cli("kill", name)
        cli("delete", name)
    assert_gone(vm_state, name)
