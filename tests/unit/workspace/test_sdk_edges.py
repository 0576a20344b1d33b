"""SDK edges: a ``with`` block deletes only the workspace it created, and the
two ``get`` calls have their own names (``get`` itself is a deprecated alias)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from microagent.sdk import Workspace


class FakeStore:
    """Records the calls the SDK makes; every workspace exists."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def create(self, name: str, **_: Any) -> None:
        self.calls.append(("create", name))

    def start(self, name: str, **_: Any) -> None:
        self.calls.append(("start", name))

    def manifest(self, name: str) -> None:
        self.calls.append(("manifest", name))

    def delete(self, name: str, *, force: bool) -> dict[str, bool]:
        self.calls.append(("delete", name))
        return {"deleted": True}


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    fake = FakeStore()
    monkeypatch.setattr("microagent.sdk.WorkspaceStore", lambda *a, **k: fake)
    return fake


def test_leaving_the_block_deletes_a_workspace_it_created(store: FakeStore) -> None:
    with Workspace.create("made", start=False) as ws:
        assert ws.name == "made"
    assert store.calls == [("create", "made"), ("delete", "made")]


def test_leaving_the_block_keeps_a_workspace_it_opened(store: FakeStore) -> None:
    with Workspace.open("there") as ws:
        assert ws.name == "there"
    with Workspace("constructed"):
        pass
    assert store.calls == [("manifest", "there")]


def test_the_deprecated_class_get_opens_and_keeps(store: FakeStore) -> None:
    with pytest.warns(DeprecationWarning, match=r"Workspace\.open\(name\)") as record:
        ws = Workspace.get("there")
    assert record[0].filename == __file__  # the warning points at the caller
    with ws:
        pass
    assert isinstance(ws, Workspace) and ws.name == "there"
    assert store.calls == [("manifest", "there")]


def test_the_deprecated_instance_get_reads_a_file(store: FakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[tuple[Any, ...]] = []
    monkeypatch.setattr(Workspace, "read_file",
                        lambda self, path, dest=None, **kw: read.append((self.name, path, dest, kw)) or b"data")
    ws = Workspace("w")
    with pytest.warns(DeprecationWarning, match=r"ws\.read_file\(path\)"):
        assert ws.get("/etc/hostname") == b"data"
    assert read == [("w", "/etc/hostname", None, {})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ws.read_file("/x") == b"data"  # the new names do not warn
        Workspace.open("w")
