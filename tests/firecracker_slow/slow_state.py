"""The state root and environment of one slow-lane test, and the CLI bound to them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MICROAGENT = str(Path(sys.executable).parent / "microagent")
#: one line per slow-lane test: how long it took, step by step (printed in the terminal summary)
TIMINGS: list[str] = []


def report(line: str) -> None:
    """Print ``line`` now (``-s``) and again in the run's closing summary."""
    print(line, flush=True)
    TIMINGS.append(line)


@dataclass(frozen=True)
class SlowState:
    root: Path
    env: dict[str, str]
    #: e.g. ``nsenter --net=/run/netns/X --``: run the CLI inside a test's network namespace
    prefix: tuple[str, ...] = ()

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.prefix, MICROAGENT, *args], capture_output=True, input=input, timeout=timeout,
                              env=self.env)
