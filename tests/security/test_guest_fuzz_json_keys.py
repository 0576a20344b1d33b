"""The guest's JSON reader and member names with an embedded NUL.

Found while writing the guest parser fuzzers: the reader decoded ``\\u0000``
in a member name and looked members up with strcmp, so ``"kind\\u0000"``
answered for ``kind``. A request the host sent as a ``get`` (the last
``kind`` wins in the guest) ran as an ``exec``. The reader now refuses such
names, like the NUL-free check on string values.

Runs the real guest (``microagent-init --agent``) built from guest/ now.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.agent_proc import Agent
from microagent.channel.mux import DataEvent, ErrorEvent, ExitEvent

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guest_init() -> Path:
    made = subprocess.run(["make", "-s", "-C", str(REPO / "guest")], capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, f"make -C guest failed:\n{made.stdout}{made.stderr}"
    return REPO / "guest" / "build" / "x86_64" / "microagent-init"


def test_member_name_with_nul_does_not_alias_another(guest_init: Path, tmp_path: Path) -> None:
    agent = Agent(guest_init, tmp_path / "agent.log")
    try:
        session = agent.conn.open_session("get", path="/nonexistent/x",
                                          **{"kind\x00": "exec", "argv": ["echo", "smuggled"]})
        events = [session.recv(timeout=5)]
        while not isinstance(events[-1], (ExitEvent, ErrorEvent)):
            events.append(session.recv(timeout=5))
    finally:
        agent.stop()
    out = b"".join(e.data for e in events if isinstance(e, DataEvent))
    assert b"smuggled" not in out, f"the guest ran the smuggled exec: {events}"
    final = events[-1]
    assert isinstance(final, ErrorEvent) and final.code == "bad_request", events
