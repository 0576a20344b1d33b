"""The backend-neutral supervisor contract: every backend answers the same way.

Runs once per harness (``harness_*.py``): request validation, ``host`` on its
own OS and elsewhere, state-transition rules for workspaces that were never
started, delete idempotence, the error envelope, and (where the harness is
live) one start/stop/delete cycle.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest

from contract.base import Harness
from microagent.errors import KINDS
from microagent.host.selection import OS_NAMES


def _assert_envelope(answer: dict[str, Any], backend: str, kind: str) -> None:
    assert answer["ok"] is False, answer
    assert answer["backend"] == backend
    error = answer["error"]
    assert error["kind"] in KINDS and error["kind"] == kind, answer
    message = error["message"]
    assert isinstance(message, str) and message and not message[0].isupper(), message
    assert "Traceback" not in message


def _mutate(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(req: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = req
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return apply


_DELETE = object()

#: (id, command, mutation, what the message must name)
INVALID = [
    ("memory-type", "start", _mutate("config.memoryMiB", "512"), "config.memoryMiB must be an integer"),
    ("cpu-range", "start", _mutate("config.cpuCount", 0), "config.cpuCount must be between"),
    ("unknown-field", "start", _mutate("config.turbo", True), "'turbo'"),
    ("unsafe-name", "stop", _mutate("identity.runtimeID", "../etc"), "identity.runtimeID"),
    ("relative-kernel", "check", _mutate("config.kernelPath", "Image"), "config.kernelPath must be an absolute path"),
    ("forward-isolated", "start", _mutate("config.network", {"mode": "isolated", "portForwards": [
        {"hostPort": 8080, "guestPort": 80}]}), "network.portForwards"),
    ("reserved-disk", "start", _mutate("config.disks", [{"name": "rootfs", "path": "/d", "mountpoint": "/d"}]),
     "config.disks[0].name"),
    ("missing-identity", "stop", _mutate("identity", _DELETE), "identity is required"),
    ("unknown-command", "stop", _mutate("command", "explode"), "unknown command 'explode'"),
    ("exec-outside-run", "start", _mutate("exec", {"argv": ["true"]}), "exec is only valid"),
]


@pytest.mark.parametrize(("command", "mutate", "names"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_requests_are_permanent_and_name_the_field(harness: Harness, command: str,
                                                            mutate: Callable[[dict[str, Any]], None],
                                                            names: str) -> None:
    request = copy.deepcopy(harness.request(command))
    mutate(request)
    answer = harness.call(request)
    _assert_envelope(answer, harness.name, "permanent")
    assert names in answer["error"]["message"]
    assert list(harness.state_dir.iterdir()) == []  # refused before anything was written


def test_request_for_another_backend_is_refused(harness: Harness) -> None:
    request = harness.request("inspect")
    request["identity"]["backend"] = "qemu" if harness.name != "qemu" else "firecracker"
    answer = harness.call(request)
    _assert_envelope(answer, harness.name, "permanent")
    assert "identity.backend" in answer["error"]["message"]


def test_host_answers_on_its_own_os(harness: Harness) -> None:
    answer = harness.call({"command": "host"})
    assert answer["ok"] is True, answer
    assert answer["backend"] == harness.name and answer["host"]["backend"] == harness.name
    assert "event" not in answer


def test_host_is_unsupported_elsewhere(harness: Harness) -> None:
    foreign = harness.call_on_foreign_os({"command": "host"})
    if foreign is None:
        pytest.skip(f"the {harness.name} harness cannot run on a foreign OS here")
    os_name, answer = foreign
    assert os_name != harness.host_os
    _assert_envelope(answer, harness.name, "unsupported")
    message = answer["error"]["message"]
    assert OS_NAMES[os_name] in message or os_name in message, message


@pytest.mark.parametrize("command", ["stop", "kill", "halt", "quarantine", "pause", "resume"])
def test_commands_on_a_never_started_workspace_conflict(harness: Harness, command: str) -> None:
    answer = harness.call(harness.request(command, name="never"))
    _assert_envelope(answer, harness.name, "conflict")
    assert "never" in answer["error"]["message"]
    assert answer["event"]["identity"]["runtimeID"] == "never"


def test_inspect_of_a_missing_workspace_is_not_found(harness: Harness) -> None:
    answer = harness.call(harness.request("inspect", name="missing"))
    _assert_envelope(answer, harness.name, "not_found")


def test_delete_of_a_missing_workspace_is_idempotent(harness: Harness) -> None:
    for _ in range(2):
        answer = harness.call(harness.request("delete", name="missing"))
        assert answer["ok"] is True, answer
        assert answer["event"]["state"] == "unknown" and answer["event"]["detail"] == "absent"
        assert answer["event"]["identity"]["runtimeID"] == "missing"


def test_live_cycle(harness: Harness) -> None:
    if not harness.live:
        pytest.skip(f"{harness.name}: not live here ({harness.live_reason})")
    overrides = harness.live_config()
    started = harness.call(harness.request("start", **overrides))
    assert started["ok"], started
    state = started["event"]["state"]
    assert state in ("running", "starting")
    # the VM's identity: a VMM PID, or (Hyper-V) the compute system ID that plays its role
    assert started["runtime"].get("pid") or started["runtime"].get("systemId")
    _assert_envelope(harness.call(harness.request("start", **overrides)), harness.name, "conflict")
    _assert_envelope(harness.call(harness.request("delete")), harness.name, "conflict")
    inspected = harness.call(harness.request("inspect"))
    assert inspected["ok"] and inspected["event"]["state"] in ("running", "starting")
    stopped = harness.call(harness.request("stop"))
    assert stopped["ok"] and stopped["event"]["state"] == "stopped", stopped
    _assert_envelope(harness.call(harness.request("stop")), harness.name, "conflict")
    assert harness.call(harness.request("inspect"))["event"]["state"] == "stopped"
    deleted = harness.call(harness.request("delete"))
    assert deleted["ok"] and deleted["event"]["detail"] == "deleted"
    assert harness.call(harness.request("delete"))["event"]["detail"] == "absent"
