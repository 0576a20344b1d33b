"""Request validation fails closed with a message naming the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microagent.errors import InvalidRequest
from microagent.vmkit.types import (
    CPU_RANGE,
    MEMORY_MIB_RANGE,
    BootConfig,
    BootRequest,
    HostRequest,
    Request,
    Response,
    RunRequest,
    StateRequest,
    is_safe_name,
    parse_request,
    to_wire,
)

IDENT = {"requestID": "r1", "runtimeID": "ws1", "role": "workload", "backend": "qemu"}
CONFIG = {"stateDir": "/tmp/sd", "kernelPath": "/k/Image", "rootfsPath": "/r/rootfs.ext4"}


def req(command: str = "start", **over: object) -> dict:
    base: dict = {"command": command, "identity": dict(IDENT), "config": dict(CONFIG)}
    base.update(over)
    return base


def test_valid_start_request_round_trips() -> None:
    r = parse_request(req(config={**CONFIG, "memoryMiB": 256, "cpuCount": 1,
                                  "network": {"mode": "user", "portForwards": [{"hostPort": 8080, "guestPort": 80}]}}))
    assert r.config is not None and r.config.memoryMiB == 256
    assert r.config.network.portForwards[0].host == "127.0.0.1"
    assert parse_request(to_wire(r)) == r


def test_host_needs_nothing() -> None:
    assert parse_request({"command": "host"}).identity is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("command"), "command is required"),
        (lambda d: d.update(command="explode"), "unknown command 'explode'"),
        (lambda d: d.pop("identity"), "identity is required for command 'start'"),
        (lambda d: d["identity"].update(role="admin"), "identity.role must be one of"),
        (lambda d: d["identity"].update(backend="vmware"), "identity.backend must be one of"),
        (lambda d: d["identity"].update(runtimeID="../etc"), "is not a safe name"),
        (lambda d: d["config"].pop("kernelPath"), "config.kernelPath is required"),
        (lambda d: d["config"].update(kernelPath="relative/Image"), "config.kernelPath must be an absolute path"),
        (lambda d: d["config"].update(memoryMiB="lots"), "config.memoryMiB must be an integer, got string"),
        (lambda d: d["config"].update(memoryMiB=True), "config.memoryMiB must be an integer, got boolean"),
        (lambda d: d["config"].update(cpuCount=0), "config.cpuCount must be between 1 and 64, got 0"),
        (lambda d: d["config"].update(bogus=1), "config has unknown field 'bogus'"),
        (lambda d: d.update(extra=1), "request has unknown field 'extra'"),
        (lambda d: d["config"].update(network={"mode": "bridged"}), "config.network.mode must be one of"),
        (lambda d: d["config"].update(network={"mode": "isolated", "portForwards": [{"hostPort": 1, "guestPort": 2}]}),
         "cannot be used with network mode isolated"),
        (lambda d: d["config"].update(network={"mode": "user", "portForwards": [{"hostPort": 1, "guestPort": 2, "protocol": "udp"}]}),
         "udp is not supported"),
        (lambda d: d["config"].update(disks=[{"name": "rootfs", "path": "/a", "mountpoint": "/m"}]), "is reserved"),
        (lambda d: d.update(exec={"argv": ["true"]}), "exec is only valid for command 'run'"),
    ],
)
def test_invalid_requests_name_the_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = req()
    mutate(data)
    with pytest.raises(InvalidRequest) as info:
        parse_request(data)
    assert message in info.value.message


def test_state_commands_need_only_state_dir() -> None:
    r = parse_request({"command": "stop", "identity": IDENT, "config": {"stateDir": "/sd"}})
    assert r.config is not None and r.config.kernelPath == ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_is_accepted_or_refused_cleanly(value: object) -> None:
    try:
        parse_request(value)
    except InvalidRequest as exc:
        assert exc.message and exc.kind == "permanent"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["memoryMiB", "cpuCount", "kernelPath", "stateDir", "hostname",
                                         "timeoutSeconds", "disks", "network"]), json_values, max_size=5))
def test_mutated_configs_never_crash(over: dict) -> None:
    data = req(config={**CONFIG, **over})
    try:
        parse_request(data)
    except InvalidRequest as exc:
        assert exc.message.startswith(("config", "identity"))


def test_response_decodes_its_own_encoding() -> None:
    doc = {"ok": False, "backend": "qemu", "error": {"kind": "conflict", "message": "x"}}
    assert Response.from_json(json.loads(json.dumps(doc))).error == doc["error"]


def test_each_command_group_decodes_to_its_own_type() -> None:
    run = parse_request(req("run", exec={"argv": ["true"]}))
    assert isinstance(run, RunRequest) and run.exec is not None and run.exec.argv == ("true",)
    start = parse_request(req("start"))
    assert isinstance(start, BootRequest) and isinstance(start.config, BootConfig)
    stop = parse_request({"command": "stop", "identity": IDENT, "config": {"stateDir": "/sd"}})
    assert isinstance(stop, StateRequest) and not isinstance(stop.config, BootConfig)
    assert isinstance(parse_request({"command": "host"}), HostRequest)
    assert all(isinstance(r, Request) for r in (run, start, stop))


def test_patterns_match_the_whole_value() -> None:
    # Python's "$" also matches before a trailing newline
    with pytest.raises(InvalidRequest, match="is not a safe name"):
        parse_request(req(identity={**IDENT, "runtimeID": "ws1\n"}))
    with pytest.raises(InvalidRequest, match="absolute path"):
        parse_request(req(config={**CONFIG, "kernelPath": "/k\x00"}))
    assert is_safe_name("a" * 63) and not is_safe_name("a" * 64) and not is_safe_name("ws1\n")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([("memoryMiB", MEMORY_MIB_RANGE), ("cpuCount", CPU_RANGE), ("stopSignal", (1, 64))]),
       st.integers(-2, 2**21))
def test_integer_bounds_are_enforced_and_named(bounded: tuple[str, tuple[int, int]], value: int) -> None:
    key, (lo, hi) = bounded
    data = req(config={**CONFIG, key: value})
    if lo <= value <= hi:
        assert getattr(parse_request(data).config, key) == value
    else:
        with pytest.raises(InvalidRequest) as info:
            parse_request(data)
        assert info.value.message == f"config.{key} must be between {lo} and {hi}, got {value}"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 65535), st.integers(1, 65535)), max_size=4, unique_by=lambda p: p[0]),
       st.sampled_from(["user", "nat"]), st.lists(st.from_regex(r"[A-Z]{1,3}=[a-z]{0,3}", fullmatch=True), max_size=3))
def test_valid_requests_round_trip(ports: list[tuple[int, int]], mode: str, env: list[str]) -> None:
    forwards = [{"hostPort": h, "guestPort": g} for h, g in ports]
    r = parse_request(req(config={**CONFIG, "env": env, "network": {"mode": mode, "portForwards": forwards}}))
    assert parse_request(json.loads(json.dumps(to_wire(r)))) == r


def test_a_refusal_echoing_an_invalid_identity_still_decodes() -> None:
    doc = {"ok": False, "backend": "qemu", "error": {"kind": "permanent", "message": "identity.role ..."},
           "event": {"identity": {"requestID": "", "runtimeID": "../x", "role": "admin", "backend": "qemu"},
                     "state": "unknown", "detail": "", "observedAt": "t"}}
    assert Response.from_json(doc).error == doc["error"]
    with pytest.raises(InvalidRequest, match="unknown field 'surprise'"):
        Response.from_json({"ok": True, "backend": "qemu", "surprise": 1})
