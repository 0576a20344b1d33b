"""Pull progress on a terminal: rich loads at the first layer, so a run of a cached image
(no layer pulled) never pays for it; a pull still draws its bars."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import io, sys
from microagent.cli.progress import TerminalProgress
progress = TerminalProgress()
{body}
progress.close()
print("rich" in sys.modules)
"""


def _probe(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE.format(body=body)], capture_output=True, text=True,
                          check=True)


def test_nothing_pulled_loads_no_rich() -> None:
    assert _probe("pass").stdout == "False\n"


def test_a_pulled_layer_draws_its_bar() -> None:
    proc = _probe('progress.on_layer_start("sha256:0123456789abcdef", 2048)\n'
                  'progress.on_bytes("sha256:0123456789abcdef", 1024)\n'
                  'progress.on_bytes("sha256:0123456789abcdef", 1024)\n'
                  'progress.on_layer_done("sha256:0123456789abcdef")')
    assert proc.stdout == "True\n"
    assert "0123456789ab" in proc.stderr and "2.0/2.0 kB" in proc.stderr
