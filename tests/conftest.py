"""Suite-wide fixtures: VM test accounting and the leak check."""

from __future__ import annotations

import pytest

_vm_outcomes: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}


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
