"""The default bounds of the SDK, ``exec --json`` and ``cp`` against a guest that ignores limits."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
from unit.channel.fake_guest import FakeGuest, FakeSession, fake_pair

from microagent.channel import ChannelConnection, SocketStream
from microagent.channel.limits import DEFAULT_GET_MAX, DEFAULT_OUTPUT_LIMIT
from microagent.errors import ResourceExhausted
from microagent.workspace.sessions import DEFAULT_OUTPUT_LIMIT as SESSIONS_LIMIT
from microagent.workspace.sessions import GuestConnection


def _flood(s: FakeSession) -> None:
    """20 MiB of stdout and stderr, whatever the limits say; claims nothing was cut."""
    s.control({"started": {"pid": 1}})
    s.send_data(1, bytes(20 << 20))
    s.send_data(2, bytes(20 << 20))
    s.send_eof(1)
    s.send_eof(2)
    s.exit(FakeGuest._exited(0))  # noqa: SLF001


@pytest.fixture
def session() -> Iterator[tuple[GuestConnection, FakeGuest]]:
    host, guest = fake_pair()
    guest.handlers["exec"] = _flood
    gs = object.__new__(GuestConnection)  # a GuestConnection on a fake channel: no workspace needed
    gs.name = "fake"
    gs.workdir, gs.user = "", ""  # the image's run defaults
    gs.conn = ChannelConnection.open(SocketStream(host), name="fake", hello_timeout=2)
    yield gs, guest
    gs.close()
    guest.vanish()


def test_sdk_exec_keeps_16_mib_per_stream_by_default(session: tuple[GuestConnection, FakeGuest]) -> None:
    gs, _ = session
    assert SESSIONS_LIMIT == DEFAULT_OUTPUT_LIMIT == 16 << 20
    r = gs.exec(["flood"])
    assert len(r.stdout) == len(r.stderr) == DEFAULT_OUTPUT_LIMIT
    assert r.stdout_truncated and r.stderr_truncated
    r = gs.exec(["flood"], output_limit=None)  # the documented way to raise it
    assert len(r.stdout) == 20 << 20 and not r.stdout_truncated


def test_sdk_read_file_is_bounded_by_default(session: tuple[GuestConnection, FakeGuest]) -> None:
    gs, guest = session
    guest.files["/big"] = (bytes(DEFAULT_GET_MAX + 1), 0o644)
    with pytest.raises(ResourceExhausted):
        gs.get("/big")
    assert len(gs.get("/big", max_bytes=None)) == DEFAULT_GET_MAX + 1  # type: ignore[arg-type]


def test_public_defaults_are_the_documented_ones() -> None:
    from microagent.cli.cmd_exec import exec_
    from microagent.sdk import Workspace

    limit = next(p for p in exec_.params if p.name == "output_limit")
    assert limit.default == DEFAULT_OUTPUT_LIMIT
    assert inspect.signature(Workspace.exec).parameters["output_limit"].default == DEFAULT_OUTPUT_LIMIT
    assert inspect.signature(Workspace.read_file).parameters["max_bytes"].default == DEFAULT_GET_MAX
