"""Durations (timeouts) are validated at the edge: nan, inf, negative and junk are usage errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microagent import durations
from microagent.errors import Permanent

MICROAGENT = str(Path(sys.executable).parent / "microagent")

COMMANDS = [
    ("run", "--timeout", "builtin:busybox", "--", "true"),
    ("run", "--boot-timeout", "builtin:busybox", "--", "true"),
    ("start", "--boot-timeout", "ws"),
    ("exec", "--timeout", "ws", "--", "true"),
    ("connect", "--timeout", "ws", "--send", "true"),
    ("wait", "--timeout", "ws"),
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e400", "abc", "NaN"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c[0]}{c[1]}")
def test_bad_durations_are_usage_errors(tmp_path: Path, command: tuple[str, ...], value: str) -> None:
    verb, option, *rest = command
    proc = subprocess.run([MICROAGENT, verb, "--json", f"{option}={value}", *rest], capture_output=True,
                          text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "MICROAGENT_STATE_DIR": str(tmp_path), "HOME": str(tmp_path)})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["error"]["kind"] == "permanent"
    assert option in doc["error"]["message"]
    assert "Traceback" not in proc.stderr
    # nothing was built or started
    assert not (tmp_path / "workspaces").exists() and not (tmp_path / "images").exists()


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_seconds_accepts_exactly_the_finite_bounded_non_negative(value: float) -> None:
    ok = math.isfinite(value) and 0 <= value <= durations.MAX_SECONDS
    try:
        assert durations.seconds(value) == value and ok
    except Permanent as exc:
        assert not ok and exc.remediation


def test_optional_seconds_keeps_none() -> None:
    assert durations.optional_seconds(None) is None
    assert durations.optional_seconds("2.5") == 2.5
