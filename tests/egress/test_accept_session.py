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


def test_a_session_takes_one_connection_even_after_the_host_half_closed_it(conn: ChannelConnection) -> None:
    # Regression: once the host's EOF had half-closed its connection, the session waited on
    # the listener again and took the next connection into the finished stream (its client
    # then got nothing, and the proxy an unexpected request on the old connection).
    port = _free_port()
    taken: list[ForwardStream] = []
    waiter = threading.Thread(target=lambda: taken.append(accept_one(conn, port)))
    waiter.start()
    deadline = time.monotonic() + 10
    while not _listening(port):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
        waiter.join(10)
        [stream] = taken
        stream.sendall(b"answer")
        stream.shutdown_write()  # the proxy's answer is over; the client has not closed yet
        assert first.recv(100) == b"answer" and first.recv(100) == b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
            second.sendall(b"second")
            time.sleep(0.5)  # a buggy session takes it within a poll round
            nxt: list[ForwardStream] = []
            t = threading.Thread(target=lambda: nxt.append(accept_one(conn, port)), daemon=True)
            t.start()
            t.join(10)
            assert nxt, "the second connection was swallowed by the first session"
            assert nxt[0].recv(100, timeout=10) == b"second"
            nxt[0].close()
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
