"""Fixtures for tests/agent/: the real C guest (``microagent-init --agent``).

The binary is looked for at ``$MICROAGENT_INIT``, then
``guest/build/x86_64/microagent-init``, then
``src/microagent/guest/x86_64/microagent-init``. If none exists it is built
with ``make -C guest``; the suite is skipped only when there is no C compiler.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.agent_proc import Agent
from microagent.channel import ChannelConnection

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = [
    REPO / "guest" / "build" / "x86_64" / "microagent-init",
    REPO / "src" / "microagent" / "guest" / "x86_64" / "microagent-init",
]


def _find() -> Path | None:
    env = os.environ.get("MICROAGENT_INIT")
    paths = ([Path(env)] if env else []) + CANDIDATES
    for p in paths:
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


@pytest.fixture(scope="session")
def agent_binary() -> Path:
    """Path of the microagent-init binary, built if needed."""
    found = _find()
    if found is not None:
        return found
    compilers = [c for c in ("musl-gcc", "cc", "gcc", "clang") if shutil.which(c)]
    if not compilers:
        reason = "no C compiler (musl-gcc/cc/gcc/clang) to build guest/microagent-init"
        print(f"SKIP tests/agent: {reason}")
        pytest.skip(reason)
    cmd = ["make", "-C", str(REPO / "guest")]
    if compilers[0] != "musl-gcc":  # guest/Makefile prefers musl-gcc; any C11 compiler works
        cmd.append(f"CC={compilers[0]}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    found = _find()
    if found is None:
        pytest.fail(
            f"make -C guest did not produce microagent-init (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return found


@pytest.fixture
def agent(agent_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """A fresh agent and a connected, handshaken :class:`ChannelConnection`."""
    a = Agent(agent_binary, tmp_path_factory.mktemp("agent-log") / "agent.log")
    yield a
    alive = a.proc.poll() is None
    a.stop()
    assert alive, f"agent died during the test (rc={a.proc.returncode}); log:\n{a.log()}"


@pytest.fixture
def conn(agent: Agent) -> ChannelConnection:
    return agent.conn


def build_guest_driver(work: Path, driver: str, includes: str) -> Path:
    """A test program built from ``driver`` (C that ``#include``s ``includes``, a guest source
    file, so its static functions are in reach) linked with the other guest sources."""
    cc = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        pytest.fail("no C compiler (cc/gcc/clang): run 'make install'")
    (work / "driver.c").write_text(driver)
    guest = REPO / "guest"
    others = [str(p) for p in sorted(guest.glob("*.c")) if p.name not in (includes, "main.c")]
    subprocess.run([cc, "-std=c11", "-O1", "-I", str(guest), "-o", str(work / "driver"), str(work / "driver.c"),
                    *others], check=True, capture_output=True)
    return work / "driver"
