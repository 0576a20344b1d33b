"""clone's refusals, on prepared workspaces (nothing boots): names, volumes' single writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from microagent.errors import Conflict, InvalidRequest, NotFound
from microagent.sdk import Workspace
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.volumes import create_volume, holders


def test_clone_refusals_and_the_single_writer_of_a_volume(vm_root: Path) -> None:
    store = WorkspaceStore(vm_root)
    create_volume(vm_root, "cachevol")
    create_volume(vm_root, "shared")
    rw = Workspace.create("holder", start=False, state_dir=vm_root, volumes=["cachevol:/cache"])
    ro = Workspace.create("reader", start=False, state_dir=vm_root, volumes=["shared:/shared:ro"])
    try:
        with pytest.raises(InvalidRequest):
            rw.clone("bad/name")
        with pytest.raises(NotFound):
            Workspace("missing", state_dir=vm_root).clone("x")
        with pytest.raises(Conflict, match="itself"):
            rw.clone("holder")
        with pytest.raises(Conflict, match="volume cachevol is attached to workspace holder"):
            rw.clone("second-writer")
        assert not store.exists("second-writer") and [h["workspace"] for h in holders(vm_root, "cachevol")] == ["holder"]
        twin = ro.clone("reader-twin")
        assert twin.state.value == "prepared" and store.manifest("reader-twin").extra["clonedFrom"] == "reader"
        assert sorted(h["workspace"] for h in holders(vm_root, "shared")) == ["reader", "reader-twin"]
        twin.delete()
    finally:
        rw.delete(force=True)
        ro.delete(force=True)


def test_a_clone_keeps_its_sources_setup_record(vm_root: Path) -> None:
    """The setup's work is on the copied disk: the clone must not run it a second time."""
    from microagent.paths import workspace_dir
    from microagent.workspace import services

    store = WorkspaceStore(vm_root)
    src = Workspace.create("prepped", start=False, state_dir=vm_root, setup=["echo once >> /setup.log"])
    try:
        manifest = store.manifest("prepped")
        assert services.setup_pending(vm_root, manifest)
        services.mark_setup_done(workspace_dir(vm_root, "prepped"), manifest, "test: as after a first start")
        twin = src.clone("prepped-twin")
        assert not services.setup_pending(vm_root, store.manifest("prepped-twin"))
        twin.delete()
    finally:
        src.delete(force=True)
