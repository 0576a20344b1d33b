"""The channel helper runs once per workspace: what it imports is memory every
workspace pays (about 1 MiB each for argparse, typing, pathlib, enum, re or json
with their dependencies). This keeps the heavy modules out of it; counting modules,
not timing (bench/footprint.py measures the memory)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: what the helper must not load: it parses its own command line, keeps the console log
#: capped in its own loop (no thread), handles paths as text, and speaks JSON, sockets,
#: signals and polling through _json, _socket, _signal and select (enum, re, collections)
KEPT_OUT = ("argparse", "typing", "pathlib", "threading", "ipaddress", "urllib.parse", "contextlib",
            "enum", "re", "json", "socket", "signal", "selectors", "collections", "functools", "hmac")

_DUMP_AT_EXIT = """
import atexit, sys
atexit.register(lambda: open(sys.argv[1], "w").write(" ".join(sorted(sys.modules))))
from microagent.channel import router
sys.exit(router.main(sys.argv[2:]))
"""


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{path} never appeared: {log.read_text()}"
        time.sleep(0.02)


def test_a_serving_helper_stays_off_the_heavy_modules(agent_binary: Path, tmp_path: Path) -> None:
    """The real helper, between the real guest agent and a real QEMU's QMP monitor (a VM-less
    ``-machine none``), after serving an exec: everything it loaded by then."""
    from microagent.channel import ExecRequest, open_channel
    from microagent.channel.exec import run

    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.fail("qemu-system-x86_64 is missing: make test installs it (apt-get install qemu-system-x86)")
    guest, control, qmp, modules = (tmp_path / n for n in ("guest.sock", "control.sock", "qmp.sock", "modules"))
    procs = [subprocess.Popen([qemu, "-machine", "none", "-nodefaults", "-display", "none", "-S",
                               "-qmp", f"unix:{qmp},server=on,wait=off"], stderr=subprocess.DEVNULL),
             subprocess.Popen([str(agent_binary), "--agent", "--listen", str(guest)], stderr=subprocess.DEVNULL)]
    try:
        _wait_for(qmp, procs[0], tmp_path / "modules")
        log = tmp_path / "router.log"
        helper = subprocess.Popen([sys.executable, "-c", _DUMP_AT_EXIT, str(modules), "--guest", f"unix:{guest}",
                                   "--listen", str(control), "--vm-events", str(qmp), "--hello-timeout", "10",
                                   "--serial-log", str(tmp_path / "serial.log")], stderr=open(log, "wb"))
        procs.append(helper)
        _wait_for(control, helper, log)
        with open_channel(control) as conn:
            assert run(conn, ExecRequest(argv=["echo", "hi"])).stdout == b"hi\n"
        time.sleep(0.6)  # the exec count is published within count_interval_s
        assert json.loads((tmp_path / "exec-count.json").read_text()) == {"execs": 1}
        helper.send_signal(signal.SIGTERM)
        assert helper.wait(10) == 0, log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    loaded = modules.read_text().split()
    assert "microagent.channel.vm_events" in loaded and "microagent.channel.router" in loaded
    assert [m for m in KEPT_OUT if m in loaded] == []


def test_the_helper_modules_stay_off_the_heavy_modules_when_imported() -> None:
    code = ("import sys, os\n"
            "import microagent.channel.router as r, microagent.serial_log, microagent.channel.vm_events\n"
            "import microagent.channel.stream, microagent.unixsock\n"
            "r.parse_args(['--guest', 'unix:/x', '--listen', '/y', '--publish', '3:80', '--generation', '2'])\n"
            "os.write(1, ' '.join(sorted(sys.modules)).encode())")
    loaded = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.split()
    assert [m for m in KEPT_OUT if m in loaded] == []


def test_the_command_line() -> None:
    import pytest

    from microagent.channel.router import parse_args

    opts = parse_args(["--guest", "fc-vsock:/r/v.sock:1024", "--listen", "/r/control.sock", "--hello-timeout",
                       "9.5", "--publish", "3:80", "--publish", "4:443", "--vm-events", "/r/q.sock",
                       "--generation", "2", "--reconnect-during-hello", "--serial-log", "/r/serial.log",
                       "--serial-log-max-bytes", "65536", "--transport", "tcp"])
    assert (opts.guest, opts.listen, opts.hello_timeout, opts.publish, opts.vm_events, opts.generation,
            opts.reconnect_during_hello, opts.serial_log, opts.serial_log_max_bytes, opts.transport) == (
        "fc-vsock:/r/v.sock:1024", "/r/control.sock", 9.5, ["3:80", "4:443"], "/r/q.sock", 2, True,
        "/r/serial.log", 65536, "tcp")
    assert parse_args(["--guest", "unix:/g", "--listen", "/l"]).publish == []
    for bad in (["--listen", "/l"], ["--guest", "unix:/g", "--listen"], ["--guest", "g", "--listen", "l", "--bogus"],
                ["--guest", "g", "--listen", "l", "--generation", "two"],
                ["--guest", "g", "--listen", "l", "--transport", "udp"]):
        with pytest.raises(SystemExit) as exit_:
            parse_args(bad)
        assert exit_.value.code == 2
