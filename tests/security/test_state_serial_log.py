"""serial.log stays bounded: rotated at each boot, capped while the guest writes,
and read only as a bounded tail."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from microagent.paths import host_arch, kernel_dir, state_root
from microagent.serial_log import CHECK_INTERVAL_S as CHECK_S
from microagent.serial_log import cap_bytes, enforce_cap, read_tail, start_new_boot

MICROAGENT = str(Path(sys.executable).parent / "microagent")
CAP = 128 * 1024


def cli(state: Path, *args: str, raw: bool = False, timeout: float = 300) -> Any:
    args = (*args[: args.index("--")], "--json", *args[args.index("--"):]) if "--" in args else \
        (args if raw else (*args, "--json"))
    proc = subprocess.run([MICROAGENT, *args], capture_output=True, timeout=timeout,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MICROAGENT_STATE_DIR": str(state),
                               "HOME": str(state), "MICROAGENT_BACKEND": "qemu",
                               "MICROAGENT_SERIAL_LOG_MAX_BYTES": str(CAP)})
    if raw:
        return proc
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"not one JSON document: {proc.stdout!r} {proc.stderr!r}")


def test_past_the_cap_the_newest_bytes_move_to_serial_log_1(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    data = b"".join(b"line %06d\n" % i for i in range(40000))  # 480 KB
    log.write_bytes(data)
    assert enforce_cap(log, 64 * 1024) is True
    old = tmp_path / "serial.log.1"
    assert old.read_bytes() == data[-64 * 1024:]
    assert log.read_bytes().startswith(b"[microagent] serial.log passed 65536 bytes")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert enforce_cap(log, 64 * 1024) is False


def test_each_boot_starts_a_new_log_and_keeps_one(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    start_new_boot(log, "boot 1\n")
    with open(log, "ab") as fh:
        fh.write(b"first boot output\n")
    start_new_boot(log, "boot 2\n")
    start_new_boot(log, "boot 3\n")
    assert log.read_text() == "boot 3\n" and (tmp_path / "serial.log.1").read_text() == "boot 2\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_the_channel_helper_bounds_a_log_an_o_append_writer_keeps_growing(tmp_path: Path) -> None:
    """What the VMM does: one O_APPEND descriptor, written as fast as it can, while the
    channel helper's loop (checking more often than its default second) keeps the cap."""
    import socket

    from microagent.channel.router import Router

    log = tmp_path / "serial.log"
    log.touch()
    guest, host_end = socket.socketpair()
    router = Router(host_end, socket.socket(socket.AF_INET))
    router.serial_cap, router.serial_check_s = (str(log), CAP), 0.05
    loop = threading.Thread(target=router.serve, daemon=True)
    loop.start()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    biggest = 0
    chunk = b"x" * 1023 + b"\n"
    try:
        for i in range(4096):  # 4 MiB at about 3 MB/s, faster than a serial console
            os.write(fd, chunk)
            if i % 16 == 0:
                biggest = max(biggest, log.stat().st_size)
                time.sleep(0.005)
    finally:
        os.close(fd)
    time.sleep(0.3)
    router.running = False
    loop.join(5)
    guest.close()
    router.close()
    assert log.stat().st_size <= CAP and biggest < 4 * CAP
    assert (tmp_path / "serial.log.1").stat().st_size == CAP


def test_the_cap_comes_from_the_environment() -> None:
    assert cap_bytes({}) == 8 * 1024 * 1024
    assert cap_bytes({"MICROAGENT_SERIAL_LOG_MAX_BYTES": "200000"}) == 200000
    assert cap_bytes({"MICROAGENT_SERIAL_LOG_MAX_BYTES": "1"}) == 64 * 1024
    assert cap_bytes({"MICROAGENT_SERIAL_LOG_MAX_BYTES": "lots"}) == 8 * 1024 * 1024


def test_read_tail_starts_at_a_line(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"aaaa\nbbbb\ncccc\n")
    assert read_tail(log, 7) == (b"cccc\n", 15)
    assert read_tail(log, 100) == (b"aaaa\nbbbb\ncccc\n", 15)
    assert read_tail(tmp_path / "none", 10) == (b"", 0)


def _fake_workspace(root: Path, name: str, serial: bytes) -> None:
    ws = root / "workspaces" / name
    ws.mkdir(parents=True)
    (ws / "workspace.json").write_text(json.dumps({"name": name, "backend": "qemu"}))
    rt = root / "run" / name
    rt.mkdir(parents=True)
    (rt / "serial.log").write_bytes(serial)
    root.chmod(0o700)


def test_logs_reads_only_a_bounded_tail(tmp_path: Path) -> None:
    lines = [b"console line %07d " % i + b"y" * 40 for i in range(200000)]  # ~11 MB
    _fake_workspace(tmp_path, "big", b"\n".join(lines) + b"\n")
    code, doc = cli(tmp_path, "logs", "big")
    assert code == 0
    log = doc["log"].encode()
    assert 0 < len(log) <= 1024 * 1024 and log.endswith(lines[-1] + b"\n")
    assert log.split(b"\n")[0] in lines  # cut at a line start
    code, doc = cli(tmp_path, "logs", "big", "--tail", "3")
    assert doc["log"].encode() == b"\n".join(lines[-3:]) + b"\n"
    code, doc = cli(tmp_path, "logs", "big", "--bytes", "200")
    assert 0 < len(doc["log"]) <= 200 and doc["log"].encode().endswith(lines[-1] + b"\n")
    proc = cli(tmp_path, "logs", "big", raw=True)
    assert proc.returncode == 0 and 0 < len(proc.stdout) <= 1024 * 1024 and proc.stdout.endswith(lines[-1] + b"\n")
    proc = cli(tmp_path, "logs", "big", "--tail", "2", raw=True)
    assert proc.stdout == b"\n".join(lines[-2:]) + b"\n"


@pytest.mark.vm
def test_a_guest_flooding_its_console_is_bounded(tmp_path: Path) -> None:
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed (run 'make install')")
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if not (src / "kernel.json").is_file():
        pytest.skip(f"no qemu kernel in {src} (run 'make install')")
    root = tmp_path / "state"
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    root.chmod(0o700)
    rt = root / "run" / "flood"
    serial, previous = rt / "serial.log", rt / "serial.log.1"
    sizes: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                sizes.append(serial.stat().st_size + (previous.stat().st_size if previous.exists() else 0))
            except FileNotFoundError:
                pass
            time.sleep(0.05)

    try:
        assert cli(root, "create", "flood", "--profile", "tiny")[0] == 0
        code, doc = cli(root, "start", "flood")
        assert code == 0 and doc["state"] == "running", doc
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        total = 16 * CAP  # 2 MiB through the emulated UART
        code, doc = cli(root, "exec", "flood", "--", "sh", "-c",
                        f"yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghij | head -c {total} > /dev/console",
                        timeout=600)
        assert code == 0 and doc["result"]["exit_code"] == 0, doc
        time.sleep(1.5)
        done.set()
        sampler.join()
        slack = 1024 * 1024  # what the guest can write between two checks, at most
        assert max(sizes) <= 2 * CAP + slack, max(sizes)
        assert serial.stat().st_size <= CAP and previous.stat().st_size <= CAP
        assert b"older output is in serial.log.1" in serial.read_bytes()
        assert b"0123456789abcdefghij" in previous.read_bytes()
        code, doc = cli(root, "logs", "flood")
        assert code == 0 and len(doc["log"]) <= CAP + 4096
        # the channel still works after the rotations, and the next boot starts a new log
        assert cli(root, "halt", "flood")[0] == 0
        assert cli(root, "start", "flood")[0] == 0
        assert serial.read_text(errors="replace").count("[microagent] boot") == 1
        # serial.log.1 is now what was left of boot 1: its end, with the power-off
        assert previous.read_text(errors="replace").count("[microagent] boot") == 0
        assert b"older output is in serial.log.1" in previous.read_bytes() and b"Power down" in previous.read_bytes()
        assert stat.S_IMODE(serial.stat().st_mode) == 0o600 and stat.S_IMODE(previous.stat().st_mode) == 0o600
        # quarantined, the channel helper is gone: a watcher keeps the cap while the VMM lives
        code, doc = cli(root, "exec", "flood", "--", "sh", "-c",
                        f"(sleep 2; yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {total} > /dev/console; "
                        "echo flood-done > /dev/console) </dev/null >/dev/null 2>&1 &")
        assert code == 0, doc
        assert cli(root, "quarantine", "flood")[0] == 0
        sizes.clear()
        done.clear()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        def finished() -> bool:  # the last line may already have been rotated into serial.log.1
            return any(b"flood-done" in p.read_bytes() for p in (serial, previous) if p.exists())

        deadline = time.monotonic() + 120
        while not finished() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)
        done.set()
        sampler.join()
        assert finished()
        assert max(sizes) <= 2 * CAP + slack and serial.stat().st_size <= CAP, max(sizes)
        assert cli(root, "kill", "flood")[0] == 0
        time.sleep(CHECK_S + 0.5)
        watchers = subprocess.run(["pgrep", "-f", f"microagent.serial_log {serial}"], capture_output=True, text=True)
        assert watchers.stdout == "", "the watcher outlived the VMM"
    finally:
        done.set()
        cli(root, "delete", "-f", "flood")
