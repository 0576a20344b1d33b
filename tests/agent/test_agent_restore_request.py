"""The guest's ``restore`` command refuses bad input before touching the clock or the pool.

Only refusals are exercised here: the agent runs on this host, and a valid
request would set the host's clock (the valid path is covered by real
restores in tests/snapshots/test_vm_snapshots.py).
"""

from __future__ import annotations

import time

import pytest

from microagent.channel import ChannelConnection, GuestError

GOOD = {"timeNs": 1, "entropy": "00" * 32, "hostname": "h", "generation": 1}


def test_hello_reports_restore_and_generation(conn: ChannelConnection) -> None:
    assert "restore" in conn.features


@pytest.mark.parametrize("change", [
    {"entropy": ""}, {"entropy": "0"}, {"entropy": "zz"}, {"entropy": "AB"}, {"entropy": "00" * 257},
    {"timeNs": 0}, {"timeNs": "now"}, {"generation": -1}, {"hostname": ""}, {"hostname": "h" * 65},
    {"entropy": None},
])
def test_bad_restore_requests_are_refused(conn: ChannelConnection, change: dict[str, object]) -> None:
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    before = time.time()
    with conn.open_session("restore", **body) as session, pytest.raises(GuestError) as exc:
        session.wait_final(5)
    assert exc.value.code == "bad_request"
    assert abs(time.time() - before) < 5  # the host clock was not touched
