"""exec and shell sessions against the real guest in agent mode."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from agent.agent_proc import Agent, wait_gone

from microagent.channel import ChannelConnection, ExecRequest, open_shell
from microagent.channel.exec import run, start

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_hello(conn: ChannelConnection) -> None:
    hello = conn.guest_hello
    assert hello is not None
    assert hello["protocol"] == "microagent-channel" and hello["version"] == 1 and hello["role"] == "guest"
    assert {"exec", "shell", "put", "get", "forward", "shutdown"} <= conn.features
    assert str(hello.get("agent", "")).startswith("microagent-init")


def test_exec_streams_and_exit_code(conn: ChannelConnection) -> None:
    r = run(conn, ExecRequest(["sh", "-c", "echo out; echo err >&2; exit 3"]), timeout=10)
    assert (r.status, r.exit_code, r.signal) == ("exited", 3, 0)
    assert r.stdout == b"out\n" and r.stderr == b"err\n"
    assert RFC3339.fullmatch(r.started_at) and RFC3339.fullmatch(r.completed_at)
    assert r.started_at <= r.completed_at
    assert isinstance(r.pid, int) and r.pid > 0
    assert not r.stdout_truncated and not r.stderr_truncated


def test_exec_signaled(conn: ChannelConnection) -> None:
    r = run(conn, ExecRequest(["sh", "-c", "kill -TERM $$"]), timeout=10)
    assert (r.status, r.signal, r.exit_code) == ("signaled", 15, 143)


def test_exec_env_cwd_user(conn: ChannelConnection) -> None:
    script = 'echo "$FOO"; pwd; id -u; id -g; echo "$HOME"; echo "$PATH"'
    r = run(conn, ExecRequest(["sh", "-c", script], env={"FOO": "bar baz"}, cwd="/tmp", user="nobody"), timeout=10)
    lines = r.stdout.decode().splitlines()
    assert r.ok, r
    assert lines[:4] == ["bar baz", "/tmp", "65534", "65534"]
    assert lines[4] == "/nonexistent"
    assert lines[5] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    r = run(conn, ExecRequest(["sh", "-c", "id -u; id -g"], user="1234:4321"), timeout=10)
    assert r.stdout == b"1234\n4321\n"
    r = run(conn, ExecRequest(["sh", "-c", "id -u; pwd"], user="root"), timeout=10)
    assert r.stdout == b"0\n/root\n"


def test_exec_failed_to_start(conn: ChannelConnection, tmp_path: Path) -> None:
    r = run(conn, ExecRequest(["no-such-command-microagent"]), timeout=10)
    assert (r.status, r.exit_code) == ("failed_to_start", 127)
    assert r.error is not None and r.error["code"] == "not_found"
    r = run(conn, ExecRequest(["/nonexistent/prog"]), timeout=10)
    assert (r.status, r.exit_code) == ("failed_to_start", 127)
    noexec = tmp_path / "noexec.sh"
    noexec.write_text("#!/bin/sh\necho hi\n")
    noexec.chmod(0o644)
    r = run(conn, ExecRequest([str(noexec)]), timeout=10)
    assert (r.status, r.exit_code) == ("failed_to_start", 126)
    assert r.error is not None and r.error["code"] == "permission_denied"
    r = run(conn, ExecRequest(["true"], cwd="/nonexistent-dir"), timeout=10)
    assert (r.status, r.exit_code) == ("failed_to_start", 126)
    assert r.error is not None and r.error["code"] == "bad_cwd"
    r = run(conn, ExecRequest(["true"], user="no-such-user-microagent"), timeout=10)
    assert (r.status, r.exit_code) == ("failed_to_start", 126)
    assert r.error is not None and r.error["code"] == "bad_user"


def test_exec_timeout(conn: ChannelConnection) -> None:
    t0 = time.monotonic()
    r = run(conn, ExecRequest(["sh", "-c", "echo before; sleep 30"], timeout_s=0.5), timeout=10)
    assert time.monotonic() - t0 < 3
    assert (r.status, r.exit_code, r.signal) == ("timed_out", 124, 9)
    assert r.stdout == b"before\n"


def test_exec_output_limits(conn: ChannelConnection) -> None:
    r = run(
        conn,
        ExecRequest(
            ["sh", "-c", "head -c 300000 /dev/zero; head -c 5000 /dev/zero >&2; exit 4"],
            stdout_limit=1000,
            stderr_limit=10,
        ),
        timeout=10,
    )
    assert r.exit_code == 4
    assert r.stdout == bytes(1000) and r.stdout_truncated
    assert r.stderr == bytes(10) and r.stderr_truncated
    r = run(conn, ExecRequest(["sh", "-c", "printf abc"], stdout_limit=3), timeout=10)
    assert r.stdout == b"abc" and not r.stdout_truncated


def test_exec_stdin(conn: ChannelConnection) -> None:
    data = os.urandom(3 << 20)
    r = run(conn, ExecRequest(["cat"], stdin=data), timeout=20)
    assert r.ok and r.stdout == data
    r = run(conn, ExecRequest(["wc", "-c"], stdin=b""), timeout=10)
    assert r.stdout.strip() == b"0"
    r = run(conn, ExecRequest(["cat"]), timeout=10)  # no stdin: /dev/null
    assert r.ok and r.stdout == b""
    # the command exits without reading its input: no hang, no error
    r = run(conn, ExecRequest(["true"], stdin=os.urandom(2 << 20)), timeout=10)
    assert r.ok


def test_exec_interactive_stdin(conn: ChannelConnection) -> None:
    h = start(conn, ExecRequest(["sh", "-c", "read a; echo got:$a"], stdin=True))
    h.write(b"hello\n")
    h.close_stdin()
    assert h.wait(10).stdout == b"got:hello\n"


def test_exec_signal_control(conn: ChannelConnection) -> None:
    h = start(conn, ExecRequest(["sleep", "30"]))
    assert h.wait_started(5)
    assert h.signal(signal.SIGTERM)
    r = h.wait(5)
    assert (r.status, r.signal) == ("signaled", 15)


def test_close_kills_process(conn: ChannelConnection) -> None:
    h = start(conn, ExecRequest(["sleep", "60"]))
    pid = h.wait_started(5)
    assert pid
    h.close()
    assert wait_gone(pid), "CLOSE did not kill the session's process"
    assert run(conn, ExecRequest(["true"]), timeout=5).ok


def test_new_hello_resets_sessions(conn: ChannelConnection) -> None:
    h = start(conn, ExecRequest(["sleep", "60"]))
    pid = h.wait_started(5)
    assert pid
    conn.handshake(5)
    assert wait_gone(pid), "a new HELLO did not kill the open session's process"
    assert run(conn, ExecRequest(["echo", "after"]), timeout=5).stdout == b"after\n"


def test_exec_pty_tty(conn: ChannelConnection) -> None:
    r = run(conn, ExecRequest(["sh", "-c", "tty; echo TERM=$TERM; stty size; echo err >&2"], pty=True, rows=33, cols=111), timeout=10)
    assert r.ok, r
    out = r.stdout.replace(b"\r\n", b"\n")
    assert re.search(rb"^/dev/pts/\d+$", out, re.M), out
    assert b"TERM=xterm-256color\n" in out and b"33 111\n" in out and b"err\n" in out
    assert r.stderr == b""


def test_shell_session(conn: ChannelConnection) -> None:
    out = bytearray()
    lock = threading.Lock()

    def sink(b: bytes) -> None:
        with lock:
            out.extend(b)

    sh = open_shell(conn, argv=["/bin/sh"], rows=24, cols=80, output=sink)
    sh.write(b"tty\n")
    sh.resize(40, 100)
    time.sleep(0.2)
    sh.write(b"stty size\nexit 7\n")
    r = sh.wait(10)
    text = bytes(out).replace(b"\r\n", b"\n")
    assert re.search(rb"/dev/pts/\d+", text), text
    assert b"40 100" in text, text
    assert r.exit_code == 7, (r, text)


def test_shell_default_login_shell(conn: ChannelConnection) -> None:
    """No argv: the user's shell from /etc/passwd (with ``-l``).

    Uses ``nobody``, whose shell here is nologin (prints and exits): the
    root login profile of this host is slow and not the guest's business.
    """
    import pwd

    shell = pwd.getpwnam("nobody").pw_shell
    if not shell.endswith("nologin"):
        pytest.skip(f"nobody's shell is {shell}, expected nologin")
    out = bytearray()
    r = open_shell(conn, user="nobody", output=out.extend).wait(10)
    assert b"not available" in out, bytes(out)
    assert (r.status, r.exit_code) == ("exited", 1)


def test_concurrent_execs(conn: ChannelConnection) -> None:
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            data = os.urandom(100_000 + i)
            r = run(conn, ExecRequest(["sh", "-c", "sleep 0.2; cat"], stdin=data), timeout=20)
            assert r.ok and r.stdout == data
            results[i] = r.stdout
        except BaseException as exc:
            errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(results) == 10
    assert time.monotonic() - t0 < 5  # they ran in parallel


def test_shutdown_makes_agent_exit(agent_binary: Path, tmp_path: Path) -> None:
    a = Agent(agent_binary, tmp_path / "agent.log")
    try:
        h = start(a.conn, ExecRequest(["sleep", "60"]))
        pid = h.wait_started(5)
        assert pid
        a.conn.shutdown("poweroff", grace_s=1)
        assert a.proc.wait(5) == 0, a.log()
        assert wait_gone(pid)
        assert a.conn.wait_closed(5)
    finally:
        a.stop()


def test_exec_event_order(conn: ChannelConnection) -> None:
    """CONTROL started first; EXIT only after the EOF of every output stream."""
    from microagent.channel import ControlEvent, DataEvent, ExitEvent

    for pty, streams in ((False, {1, 2}), (True, {1})):
        s = conn.open_session("exec", argv=["sh", "-c", "echo a; echo b >&2"], pty=pty)
        events = []
        while not events or not isinstance(events[-1], ExitEvent):
            events.append(s.recv(5))
        assert isinstance(events[0], ControlEvent) and "started" in events[0].body
        eofs = {e.stream for e in events if isinstance(e, DataEvent) and e.eof}
        assert eofs == streams
        assert all(not isinstance(e, DataEvent) or e.stream in streams for e in events)
