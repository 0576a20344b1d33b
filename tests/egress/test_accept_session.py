"""The guest's ``accept`` session kind (docs/protocol.md), against the real guest init in agent mode."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from egress.test_egress_proxy_agent import _listening

from microagent.channel import ChannelConnection
from microagent.channel.errors import GuestError
from microagent.channel.forward import ForwardStream
from microagent.channel.mux import ErrorEvent
from microagent.egress.helper import accept_one


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_accept_carries_a_guest_connection_both_ways_with_half_close(conn: ChannelConnection) -> None:
    assert "accept" in conn.features
    port = _free_port()
    taken: list[ForwardStream] = []
    waiter = threading.Thread(target=lambda: taken.append(accept_one(conn, port)))
    waiter.start()  # its OPEN creates the listener
    deadline = time.monotonic() + 10
    while not _listening(port):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(2):  # the second connection arrives while no session waits: the backlog keeps it
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            if not taken:
                waiter.join(10)
            stream = taken.pop() if taken else accept_one(conn, port)
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)
            assert stream.recv(100, timeout=10) == b"ping"
            assert stream.recv(100, timeout=10) == b""
            stream.sendall(b"pong")
            stream.shutdown_write()
            assert client.recv(100) == b"pong" and client.recv(100) == b""
            stream.close()


def test_accept_refuses_a_bad_port_and_a_second_listener(conn: ChannelConnection) -> None:
    bad = conn.open_session("accept", port=0)
    assert isinstance(bad.recv(10), ErrorEvent)
    port = _free_port()
    conn.open_session("accept", port=port)
    other = conn.open_session("accept", port=_free_port())
    event = other.recv(10)
    assert isinstance(event, ErrorEvent) and event.code == "listen_failed"
    with pytest.raises(GuestError):
        raise event.to_exception()
