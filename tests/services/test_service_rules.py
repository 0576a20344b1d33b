"""Setup and service input checks, manifests, and the config disk (no VM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microagent.errors import InvalidRequest
from microagent.runtime_state import RuntimeDir
from microagent.supervisors.netattach import write_config_disk
from microagent.workspace.manifest import Manifest
from microagent.workspace.services import check_services


def test_checks_refuse_bad_setup_service_and_restart() -> None:
    assert check_services(["a", "b"], "srv", "always") == (("a", "b"), "srv", "always")
    assert check_services() == ((), "", "never")
    for bad, words in [((["  "], None, "never"), "setup command 1 is empty"),
                       ((["ok", "x\0y"], None, "never"), "setup command 2"),
                       (((), "", "never"), "service is empty"),
                       (((), "s", "sometimes"), "restart policy 'sometimes'"),
                       (((), None, "always"), "needs --service"),
                       ((["x"] * 65, None, "never"), "at most 64"),
                       (((), "x" * 8193, "never"), "longer than 8192")]:
        with pytest.raises(InvalidRequest, match=words):
            check_services(*bad)


def test_manifests_keep_setup_and_service_and_old_ones_still_load() -> None:
    doc = {"name": "w", "image": {"ref": "builtin:busybox", "digest": "sha256:x"}, "backend": "qemu",
           "profile": "small", "resources": {"memoryMiB": 512, "cpuCount": 1, "diskSizeMiB": 100},
           "createdAt": "now", "verification": {}}
    old = Manifest.from_json(doc)
    assert (old.setup, old.service, old.restart) == ((), "", "never")
    assert "setup" not in old.to_json() and "service" not in old.to_json()
    new = Manifest.from_json({**doc, "setup": ["a", "b"], "service": {"command": "s", "restart": "always"}})
    assert (new.setup, new.service, new.restart) == (("a", "b"), "s", "always")
    assert Manifest.from_json(new.to_json()) == new


def test_the_config_disk_carries_the_service(tmp_path: Path) -> None:
    rt = RuntimeDir(tmp_path)
    disk = write_config_disk(rt, "h", {}, ("A=b",), service={"command": "srv", "restart": "on-failure"})
    doc = json.loads(disk.read_bytes().rstrip(b"\0"))
    assert doc["service"] == {"command": "srv", "restart": "on-failure"}
    assert "service" not in json.loads(write_config_disk(rt, "h", {}).read_bytes().rstrip(b"\0"))
