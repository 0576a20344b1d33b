"""Fixtures for tests/egress/: the real guest init binary (tests/agent/) and real VM boots (tests/vm/)."""

from __future__ import annotations

import pytest
from agent.conftest import agent, agent_binary, conn  # noqa: F401 - fixtures, used by name
from vm.conftest import vm_state  # noqa: F401

from egress.test_egress_proxy_agent import make_rig  # noqa: F401 - shared with the secrets tests
from egress.test_egress_vm import ns  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/egress/test_egress_vm" in str(item.fspath) or "tests/egress/test_egress_secrets_vm" in str(item.fspath):
            item.add_marker(pytest.mark.vm)
