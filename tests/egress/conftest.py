"""Fixtures for tests/egress/: the real guest init binary (tests/agent/); real VM boots use tests/conftest.py's vm_state."""

from __future__ import annotations

from agent.conftest import agent, agent_binary, conn  # noqa: F401 - fixtures, used by name

from egress.test_egress_proxy_agent import make_rig  # noqa: F401 - shared with the secrets tests
from egress.test_egress_vm import ns  # noqa: F401
