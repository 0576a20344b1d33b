"""Shutdown sends the image's StopSignal first, then SIGKILL after the grace period."""

from __future__ import annotations

import time
from pathlib import Path

from agent.agent_proc import Agent

from microagent.channel import ExecRequest
from microagent.channel.exec import start
from microagent.images.model import ImageConfig


def test_shutdown_sends_the_stop_signal(agent_binary: Path, tmp_path: Path) -> None:
    a = Agent(agent_binary, tmp_path / "agent.log")
    marker = tmp_path / "marker"
    script = f"trap 'echo got-INT > {marker}; exit 0' INT; trap 'echo got-TERM > {marker}; exit 0' TERM; " \
             "echo ready; while :; do sleep 0.05; done"
    session = start(a.conn, ExecRequest(argv=["sh", "-c", script]))
    session.wait_started(5)
    time.sleep(0.3)  # let the traps be installed
    a.conn.shutdown("poweroff", grace_s=5, signal=2)
    assert a.proc.wait(10) == 0  # agent mode: shutdown ends the agent
    assert marker.read_text().strip() == "got-INT"


def test_stop_signal_names_and_numbers() -> None:
    assert ImageConfig(stop_signal="SIGINT").stop_signal_number() == 2
    assert ImageConfig(stop_signal="QUIT").stop_signal_number() == 3
    assert ImageConfig(stop_signal="9").stop_signal_number() == 9
    assert ImageConfig().stop_signal_number() == 15
    assert ImageConfig(stop_signal="SIGBOGUS").stop_signal_number() == 15
