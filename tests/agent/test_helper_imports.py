"""The channel helper runs once per workspace: what it imports is memory every
workspace pays (about 1 MiB each for argparse, typing or pathlib with their
dependencies). This keeps the heavy modules out of it; counting modules, not timing."""

from __future__ import annotations

import json
import subprocess
import sys

#: what the helper must not load: it parses its own command line, keeps the console log
#: capped in its own loop (no thread), and handles paths as text
KEPT_OUT = ("argparse", "typing", "pathlib", "threading", "ipaddress", "urllib.parse", "contextlib")


def test_the_helper_process_stays_off_the_heavy_modules() -> None:
    code = ("import sys, json\n"
            "import microagent.channel.router as r, microagent.serial_log, microagent.channel.vm_events\n"
            "import microagent.channel.stream, microagent.unixsock\n"
            "r.parse_args(['--guest', 'unix:/x', '--listen', '/y', '--publish', '3:80', '--generation', '2'])\n"
            "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
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
