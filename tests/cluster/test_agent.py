"""The host agent as a plain object (no Ray, no VM): its capacity check and its call envelope."""

from __future__ import annotations

import pickle
from pathlib import Path

from microagent.channel.errors import GuestError
from microagent.cluster.agent import HostAgent
from microagent.errors import InvalidRequest, MicroagentError, ResourceExhausted


def test_a_full_node_refuses_before_building_anything(tmp_path: Path) -> None:
    agent = HostAgent("node-a", state_dir=tmp_path, max_workspaces=0, capabilities={"kvm": 0})
    status, err = agent.call("create", "ws", image="builtin:busybox", profile="tiny")
    assert status == "err" and isinstance(err, ResourceExhausted)
    assert "node-a" in err.message and err.details == {"node": "node-a"}
    assert agent.call("list") == ("ok", [])  # nothing was created
    assert not (tmp_path / "workspaces" / "ws").exists()


def test_the_memory_budget_bounds_the_offer(tmp_path: Path) -> None:
    agent = HostAgent("node-a", state_dir=tmp_path, memory_budget_mib=300, capabilities={"kvm": 1})
    offer = agent.offer()
    assert offer.free_mib <= 300 and offer.fits(256) and not offer.fits(512)
    assert offer.capabilities["kvm"] == 1 and offer.capabilities["accel"] == "kvm"
    status, err = agent.call("create", "ws", image="builtin:busybox", profile="small")  # 512 MiB
    assert status == "err" and isinstance(err, ResourceExhausted)


def test_errors_cross_as_values_with_kind_and_remediation(tmp_path: Path) -> None:
    agent = HostAgent("node-a", state_dir=tmp_path)
    status, err = agent.call("state", "../escape")
    assert status == "err" and isinstance(err, InvalidRequest) and err.remediation
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.message, again.remediation) == (InvalidRequest, err.message, err.remediation)
    status, err = agent.call("__init__", "x")
    assert status == "err" and "no operation" in err.message
    # an error class whose constructor takes other arguments still arrives whole
    guest = GuestError("is_directory", "/root is a directory")
    status, err = HostAgent.call(_Raiser(guest), "ping")
    assert status == "err" and isinstance(err, MicroagentError) and "is_directory" in err.message


class _Raiser:
    def __init__(self, exc: MicroagentError) -> None:
        self.exc = exc

    def ping(self) -> None:
        raise self.exc
