"""Suite-wide fixtures: VM test accounting, the leak check, and the VM tests' state root."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def vm_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's state root for real QEMU boots (tests/vm/, tests/egress/): defined once
    here, so every directory shares one instance and one ``MICROAGENT_STATE_DIR``."""
    from support import private_state_root

    with private_state_root(tmp_path_factory.mktemp("vmstate")) as root:
        yield root

_vm_outcomes: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}

#: directories whose every test boots a real VM; elsewhere, files named test_vm_*.py or *_vm.py
_VM_DIRS = ("tests/vm/", "tests/faults/", "tests/firecracker_slow/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that boot real VMs ``vm`` (the slow lane's also ``slow``), by where they live."""
    for item in items:
        path = str(item.fspath)
        name = path.rsplit("/", 1)[-1]
        if any(d in path for d in _VM_DIRS) or name.startswith("test_vm_") or name.endswith("_vm.py"):
            item.add_marker(pytest.mark.vm)
        if "tests/firecracker_slow/" in path:
            item.add_marker(pytest.mark.slow)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "vm" not in report.keywords:
        return
    if report.when == "call":
        _vm_outcomes[report.outcome] = _vm_outcomes.get(report.outcome, 0) + 1
    elif report.when == "setup" and report.outcome == "skipped":
        _vm_outcomes["skipped"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    o = _vm_outcomes
    terminalreporter.write_line(
        f"VM tests (real guest boots): {o['passed']} passed, {o['failed']} failed, {o['skipped']} skipped"
    )


def _process_umask() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))


@pytest.fixture(autouse=True)
def _umask_untouched() -> object:
    """A test that leaves the process umask (or fsutil's record of the user's) changed fails:
    later tests of file modes would otherwise pass or fail by test order."""
    from microagent import fsutil

    before, recorded = _process_umask(), fsutil._user_umask
    yield
    after = _process_umask()
    if (after, fsutil._user_umask) != (before, recorded):
        import os

        os.umask(before)
        fsutil._user_umask = recorded
        pytest.fail(f"the test changed the process umask ({before:03o} -> {after:03o}) or the recorded user "
                    "umask; restore it (entry points restrict it, libraries must not)")
