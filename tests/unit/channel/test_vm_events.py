"""The helper's QMP pause watcher: against a real QEMU's monitor, and its bound on one message."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from microagent.channel.vm_events import DISK_IO_ERROR, MAX_LINE, PauseWatcher


@pytest.fixture
def qemu_monitor(tmp_path: Path) -> Iterator[Path]:
    """A real QEMU without a guest (``-machine none``) and its QMP monitor."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.fail("qemu-system-x86_64 is missing: make test installs it (apt-get install qemu-system-x86)")
    path = tmp_path / "qmp.sock"
    proc = subprocess.Popen([qemu, "-machine", "none", "-nodefaults", "-display", "none", "-S",
                             "-qmp", f"unix:{path},server=on,wait=off"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "QEMU did not open its monitor"
            time.sleep(0.02)
        yield path
    finally:
        proc.kill()
        proc.wait(10)


def test_a_running_vmm_is_not_paused_and_its_exit_ends_the_watch(qemu_monitor: Path) -> None:
    watcher = PauseWatcher(str(qemu_monitor))
    try:
        assert watcher.reason is None  # "prelaunch" is no error pause
        assert watcher.on_readable()  # nothing arrived: still watching
    finally:
        watcher.close()


def _fake_qmp(path: Path, script: list[bytes]) -> threading.Thread:
    """A stand-in monitor (QEMU cannot be made to send what these tests need): sends
    ``script`` after the greeting and the two answers the watcher asks for."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.sendall(b'{"QMP": {}}\r\n')
            for answer in (b'{"return": {}}\r\n', b'{"return": {"status": "running"}}\r\n'):
                conn.recv(4096)
                conn.sendall(answer)
            for chunk in script:
                conn.sendall(chunk)
            time.sleep(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_an_endless_message_is_dropped_and_later_events_still_count(tmp_path: Path) -> None:
    endless = b"x" * (MAX_LINE + 4096)
    stop = b'{"event": "BLOCK_IO_ERROR", "data": {"action": "stop", "nospace": false}}\r\n'
    _fake_qmp(tmp_path / "qmp.sock", [endless, b"\n", stop])
    watcher = PauseWatcher(str(tmp_path / "qmp.sock"))
    watcher.sock.setblocking(True)
    watcher.sock.settimeout(5)
    try:
        deadline = time.monotonic() + 5
        while watcher.reason is None and time.monotonic() < deadline:
            assert watcher.on_readable()
            assert len(watcher._buf) <= MAX_LINE + 65536  # never more than the cap and one read
        assert watcher.reason == DISK_IO_ERROR
    finally:
        watcher.close()


def test_an_endless_greeting_is_refused(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "qmp.sock"))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            try:
                conn.sendall(b"y" * (MAX_LINE + 65536 * 2))
            except OSError:
                pass  # the watcher hung up, as it should

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(ConnectionError, match="longer than"):
        PauseWatcher(str(tmp_path / "qmp.sock"))
