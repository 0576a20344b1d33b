"""put, get and forward sessions against the real guest in agent mode."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from microagent.channel import (
    ChannelConnection,
    GuestConnectFailed,
    GuestError,
    GuestNotFound,
    PortPublisher,
)
from microagent.channel.files import get, get_bytes, put
from microagent.channel.forward import open_forward
from microagent.channel.mux import ErrorEvent


def test_put_get_large_file_with_mode(conn: ChannelConnection, tmp_path: Path) -> None:
    data = os.urandom(6 << 20)
    target = tmp_path / "guest" / "blob.bin"
    target.parent.mkdir()
    assert put(conn, str(target), data, mode=0o640) == len(data)
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o7777 == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["blob.bin"]  # no temp file left

    back = tmp_path / "back.bin"
    st = get(conn, str(target), back)
    assert back.read_bytes() == data
    assert st.size == len(data) and st.bytes == len(data) and st.permissions == 0o640
    assert back.stat().st_mode & 0o7777 == 0o640
    assert get_bytes(conn, str(target)) == data


def test_put_from_path_owner_mkdirs(conn: ChannelConnection, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"hello\n")
    dest = tmp_path / "a" / "b" / "c.txt"
    assert put(conn, str(dest), str(src), mode=0o600, uid=65534, gid=65534, mkdirs=True) == 6
    st = dest.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600)
    # overwrite in place (rename over the old file)
    assert put(conn, str(dest), b"", mode=0o644) == 0
    assert dest.read_bytes() == b""


def test_put_errors(conn: ChannelConnection, tmp_path: Path) -> None:
    with pytest.raises(GuestNotFound):
        put(conn, str(tmp_path / "missing-dir" / "f"), os.urandom(1 << 20))
    assert list(tmp_path.iterdir()) == []
    with conn.open_session("put", path="relative/path") as s:
        ev = s.recv(5)
        while not isinstance(ev, ErrorEvent):
            ev = s.recv(5)
        assert ev.code == "not_absolute"


def test_get_errors(conn: ChannelConnection, tmp_path: Path) -> None:
    with pytest.raises(GuestNotFound):
        get_bytes(conn, str(tmp_path / "nope"))
    with pytest.raises(GuestError) as ei:
        get_bytes(conn, str(tmp_path))
    assert ei.value.code == "is_directory"
    with pytest.raises(GuestError):  # "only regular files"
        get_bytes(conn, "/dev/null")


@pytest.fixture
def echo_server() -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve(c: socket.socket) -> None:
        with c:
            while data := c.recv(65536):
                c.sendall(data)
            c.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def test_forward_echo(conn: ChannelConnection, echo_server: int) -> None:
    payload = os.urandom(2 << 20)
    fwd = open_forward(conn, echo_server)
    sender = threading.Thread(target=lambda: (fwd.sendall(payload), fwd.shutdown_write()))
    sender.start()
    got = bytearray()
    while chunk := fwd.recv(65536, timeout=10):
        got += chunk
    sender.join(10)
    assert bytes(got) == payload
    fwd.close()
    assert conn.session_count() == 0


def test_forward_connect_failed(conn: ChannelConnection) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(GuestConnectFailed):
        open_forward(conn, port, timeout=5)


def test_publish(conn: ChannelConnection, echo_server: int) -> None:
    with PortPublisher(conn, echo_server) as pub:
        for _ in range(3):
            with socket.create_connection(pub.address, timeout=5) as c:
                c.sendall(b"ping" * 1000)
                c.shutdown(socket.SHUT_WR)
                buf = b""
                while chunk := c.recv(65536):
                    buf += chunk
            assert buf == b"ping" * 1000


def test_put_closed_midway_leaves_no_temp_file(conn: ChannelConnection, tmp_path: Path) -> None:
    s = conn.open_session("put", path=str(tmp_path / "f"))
    s.send_data(0, b"partial")
    deadline = time.monotonic() + 5
    while not list(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    s.close()
    while list(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(tmp_path.iterdir()) == []


def test_forward_ends_with_exit_after_both_eofs(conn: ChannelConnection, echo_server: int) -> None:
    fwd = open_forward(conn, echo_server)
    fwd.sendall(b"x")
    fwd.shutdown_write()
    assert fwd.recv(10, timeout=5) == b"x"
    assert fwd.recv(10, timeout=5) == b""
    assert fwd.session.wait_final(5).body == {"status": "ok"}
