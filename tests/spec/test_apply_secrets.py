"""``apply`` of a spec with secrets: applying it again is no change (no boot needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from microagent.workspace.apply import apply
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.spec import parse_spec

SPEC = """\
image: builtin:busybox
profile: tiny
egress:
  allow: [pypi.org]
secrets: [API_TOKEN]
secret-hosts: [API_TOKEN=api.example.com]
"""


def test_a_secret_keeps_its_placeholder_so_applying_twice_changes_nothing(
        vm_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "s3cr3t-value")
    store = WorkspaceStore(vm_root)
    try:
        assert apply(store, "sec", parse_spec(SPEC))["action"] == "created"
        placeholder = store.manifest("sec").egress["secrets"][0]["placeholder"]
        assert apply(store, "sec", parse_spec(SPEC))["action"] == "unchanged"
        out = apply(store, "sec", parse_spec(SPEC.replace("api.example.com", "api2.example.com")))
        assert out["action"] == "updated" and [c["key"] for c in out["changes"]] == ["egress"]
        secret = store.manifest("sec").egress["secrets"][0]
        assert secret["hosts"] == ["api2.example.com"] and secret["placeholder"] == placeholder
    finally:
        store.delete("sec", force=True)
