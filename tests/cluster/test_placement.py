"""Placement rules and the name table, without Ray (docs/cluster.md, "Placement")."""

from __future__ import annotations

import pytest

from microagent.cluster.placement import Offer, check_require, choose, satisfies
from microagent.cluster.registry import Registry
from microagent.errors import InvalidRequest, ResourceExhausted, Unsupported


def offer(node: str, *, kvm: int = 1, free: int = 4096, count: int = 0, limit: int | None = None,
          backend: str = "qemu") -> Offer:
    return Offer(node, f"host-{node}", {"kvm": kvm, "backend": backend, "arch": "x86_64", "cpus": 2,
                                        "memory_mib": 8192}, free, count, limit)


def test_spread_prefers_the_emptiest_node_then_the_most_free_memory() -> None:
    offers = [offer("a", count=2), offer("b", count=1, free=1000), offer("c", count=1, free=3000)]
    assert [o.node_id for o in choose(offers, memory_mib=256)] == ["c", "b", "a"]


def test_pack_prefers_the_fullest_node_that_still_fits() -> None:
    offers = [offer("a", count=2, free=300), offer("b", count=1), offer("c", count=2, free=200)]
    assert [o.node_id for o in choose(offers, memory_mib=256, strategy="pack")] == ["a", "b"]


def test_ties_are_broken_by_node_id_so_the_order_is_stable() -> None:
    offers = [offer("b"), offer("a")]
    assert [o.node_id for o in choose(offers, memory_mib=256)] == ["a", "b"]


def test_require_filters_nodes_numbers_are_minimums_strings_exact() -> None:
    offers = [offer("tcg", kvm=0), offer("kvm", kvm=1), offer("fc", kvm=1, backend="firecracker")]
    assert [o.node_id for o in choose(offers, memory_mib=256, require={"kvm": 1, "backend": "qemu"})] == ["kvm"]
    assert len(choose(offers, memory_mib=256, require={"kvm": 0})) == 3
    assert satisfies({"kvm": 1}, {"kvm": 1}) and not satisfies({}, {"kvm": 1})


def test_no_capable_node_is_unsupported_and_full_capable_nodes_are_exhausted() -> None:
    offers = [offer("tcg", kvm=0), offer("kvm", kvm=1, count=3, limit=3)]
    with pytest.raises(Unsupported, match="no node of the cluster offers kvm=2"):
        choose(offers, memory_mib=256, require={"kvm": 2})
    with pytest.raises(ResourceExhausted, match=r"host-kvm \(kvm\): 4096 MiB free, 3/3 workspaces"):
        choose(offers, memory_mib=256, require={"kvm": 1})
    with pytest.raises(ResourceExhausted, match="no node has room for a workspace of 8192 MiB"):
        choose(offers, memory_mib=8192)
    with pytest.raises(Unsupported, match="no live microagent host agent"):
        choose([], memory_mib=256)


@pytest.mark.parametrize("require", [{"gpu": 1}, {"kvm": "yes"}, {"kvm": -1}, {"kvm": True}, {"backend": 1}])
def test_a_bad_require_is_invalid_before_anything_is_asked(require: dict) -> None:
    with pytest.raises(InvalidRequest):
        check_require(require)


def test_an_unknown_strategy_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="unknown placement strategy"):
        choose([offer("a")], memory_mib=256, strategy="random")


def test_registry_reserves_each_name_once_across_nodes() -> None:
    reg = Registry()
    assert reg.reserve("ws", "n1") is None
    assert reg.reserve("ws", "n1") == "n1"  # taken, also for the node that has it
    assert reg.reserve("ws", "n2") == "n1"
    assert reg.move("ws", "n1", "n2") and reg.lookup("ws") == "n2"
    reg.release("ws", "n1")  # not the holder: kept
    assert reg.lookup("ws") == "n2"
    reg.release("ws", "n2")
    assert reg.lookup("ws") is None


def test_a_restarted_agent_registers_what_it_found_and_clashes_are_reported() -> None:
    reg = Registry()
    assert reg.register_agent("n1", {"hostname": "a"}, ["x", "y"]) == []
    assert reg.register_agent("n2", {"hostname": "b"}, ["y", "z"]) == ["y"]
    placed, nodes = reg.table()
    assert placed == {"x": "n1", "y": "n1", "z": "n2"} and nodes["n2"] == {"hostname": "b"}
