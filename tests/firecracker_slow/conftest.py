"""Fixtures for the Firecracker slow lane: real firecracker guests through KVM's emulator.

- ``slow_lane``: the cached test kernel's ``slow-lane.json``
  (``harness/build_kernel.py``; ``make test`` builds it first, 6-11 min
  once, then cached).  Missing → the test FAILS with the remedy.
- ``fc_slow_state``: a temp state root with that kernel installed as the
  firecracker kernel (``kernel install --from``, ``modules: []``), and the
  environment every CLI call of the test gets: ``MICROAGENT_STATE_DIR``,
  ``MICROAGENT_TEST_FIRECRACKER_SLOW_LANE``, ``MICROAGENT_FIRECRACKER`` (the
  pinned binary).  After the test no process may mention the state root.
  When the first slow-lane test (the one-shot run, ordered first) took longer
  than ``LANE_BUDGET_S``, the rest skip and print its time: on a host whose
  KVM emulator is several times slower than the ~30 s boots the suite is
  sized for, the whole lane would take about an hour. The one-shot run itself
  skips when its kernel does not reach guest init within ``PROBE_BOOT_TIMEOUT_S``.

Run by hand under the VM lock (one core is busy for minutes)::

    flock /tmp/microagent-vm.lock .venv/bin/python -m pytest -p no:cacheprovider -q tests/firecracker_slow
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from microagent.host.detect import probe_kvm
from firecracker_slow.slow_state import TIMINGS, SlowState
from support import vmm_processes


def _find_lane() -> Path | None:
    from firecracker_slow.harness import build_kernel

    return build_kernel.cached_lane()


# Looked up at collection, before any fixture points MICROAGENT_STATE_DIR at a temp root
# (the cache is under the user's state root, as `make slow-lane-kernel` left it).
_LANE = _find_lane()


#: The suite is sized for hosts whose KVM emulator boots the lane in about 30 s (README.md);
#: a host several times slower would take an hour. The first test (one boot, ordered first
#: below) is the measure: when it takes longer than this, the others skip and say why.
LANE_BUDGET_S = 150.0
_CALIBRATION = "test_firecracker_one_shot_run_through_the_slow_lane"
_first_test_seconds: list[float] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The one-shot run first among the slow lane's tests: the cheapest whole guest path,
    and the measure of the lane's speed."""
    lane = [i for i, item in enumerate(items) if "firecracker_slow" in item.nodeid.split("::")[0]]
    first = next((i for i in lane if items[i].name == _CALIBRATION), None)
    if lane and first is not None:
        items.insert(lane[0], items.pop(first))


@pytest.fixture(scope="session")
def slow_lane() -> Path:
    kvm = probe_kvm()
    if not kvm.present:
        pytest.skip(f"the firecracker slow lane needs /dev/kvm, even an emulating one: {kvm.detail}")
    if _LANE is None:
        pytest.fail("the slow-lane test kernel is not built; run 'make slow-lane-kernel' "
                    "(make test does; about 11 minutes once, then cached)")
    return _LANE


@pytest.fixture
def fc_slow_state(tmp_path: Path, slow_lane: Path) -> Iterator[SlowState]:
    import json

    from microagent.errors import MicroagentError
    from microagent.host import firecracker_binary

    try:
        binary = firecracker_binary.install_pinned()
    except MicroagentError as exc:
        pytest.fail(f"the pinned firecracker is not installed and could not be: {exc.message} "
                    "(run 'make firecracker')")
    root = tmp_path / "state"
    env = {**os.environ, "MICROAGENT_STATE_DIR": str(root), "MICROAGENT_FIRECRACKER": str(binary),
           "MICROAGENT_TEST_FIRECRACKER_SLOW_LANE": str(slow_lane)}
    env.pop("MICROAGENT_FIRECRACKER_ALLOW_NO_KVM", None)
    if _first_test_seconds and _first_test_seconds[0] > LANE_BUDGET_S:
        pytest.skip(f"this host's KVM emulator is too slow for the whole slow lane: its first test took "
                    f"{_first_test_seconds[0]:.0f} s (budget {LANE_BUDGET_S:.0f} s; about 30 s where the suite "
                    "was sized); the one-shot run test's own outcome says whether its guest booted")
    state = SlowState(root, env)
    kernel = json.loads(slow_lane.read_text())["kernel"]
    proc = state.cli("kernel", "install", "--backend", "firecracker", "--from", kernel, "--json")
    assert proc.returncode == 0, proc.stderr
    started = time.monotonic()
    yield state
    if not _first_test_seconds:
        _first_test_seconds.append(time.monotonic() - started)
    deadline = time.monotonic() + 5  # a quarantined VM's serial-log watcher notices the VMM's exit within 1 s
    while (leaked := vmm_processes(str(root))) and time.monotonic() < deadline:
        time.sleep(0.1)
    for line in leaked:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    assert leaked == [], f"VMM processes left running: {leaked}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in TIMINGS:
        terminalreporter.write_line(line)
