"""Where a ``create`` builds a workspace before it exists.

A create builds the disk and manifest in ``<root>/workspaces/.staging-<name>-<random>/``
(names starting with a dot are never workspace names, so ``list`` and
``status`` do not see it), has the supervisor prepare the runtime state, and
then publishes the directory as ``workspaces/<name>`` with one rename. A
create killed before the rename leaves only the staging directory (and
perhaps a ``prepared`` runtime directory with no VM): :func:`reap` removes
both once the creator (recorded in ``creator.json``) is dead and nobody holds
the workspace's lock. The next ``create`` of that name, ``list`` and ``gc`` reap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from microagent.errors import Conflict
from microagent.fsutil import private_dir

PREFIX = ".staging-"
CREATOR = "creator.json"
_STAGING = re.compile(r"^\.staging-(?P<name>.+)-[0-9a-f]{8}$")


def make(root: Path, name: str) -> Path:
    """A fresh staging directory for ``name``, recording this process as its creator."""
    from microagent.host.process import ref_for

    parent = private_dir(root / "workspaces")
    stage = parent / f"{PREFIX}{name}-{os.urandom(4).hex()}"
    stage.mkdir(mode=0o700)
    me = ref_for(os.getpid())
    (stage / CREATOR).write_text(json.dumps({"pid": me.pid, "starttime": me.starttime}))
    return stage


def publish(stage: Path, final: Path) -> None:
    """Make the staged workspace visible as ``final`` (one rename).

    :raises Conflict: when ``final`` appeared meanwhile (never under the workspace lock).
    """
    from microagent.fsutil import fsync_dir

    (stage / CREATOR).unlink(missing_ok=True)
    if final.exists():
        raise Conflict(f"{final} appeared while workspace {final.name} was being created",
                       f"delete it with 'microagent delete -f {final.name}' and create it again")
    os.rename(stage, final)
    fsync_dir(final.parent)


def remove(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)


def _creator_alive(stage: Path) -> bool:
    from microagent.host.process import ProcessRef, is_alive

    try:
        doc = json.loads((stage / CREATOR).read_text())
        return is_alive(ProcessRef(int(doc["pid"]), int(doc["starttime"])))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def stale(root: Path, name: str | None = None) -> list[tuple[str, Path]]:
    """``(workspace name, staging dir)`` of every staging dir whose creator is dead."""
    try:
        entries = sorted((root / "workspaces").iterdir())
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        m = _STAGING.match(entry.name)
        if m and (name is None or m["name"] == name) and not _creator_alive(entry):
            out.append((m["name"], entry))
    return out


def _remove_prepared_runtime(root: Path, name: str) -> None:
    """The runtime dir a killed create's ``prepare`` left: only while no workspace owns
    it and it records no VM (a prepare spawns nothing)."""
    from microagent.paths import runtime_dir
    from microagent.workspace.manifest import manifest_path

    rt = runtime_dir(root, name)
    if manifest_path(root, name).exists() or not rt.is_dir():
        return
    try:
        runtime = json.loads((rt / "runtime.json").read_text())
    except (OSError, ValueError):
        runtime = {}
    if isinstance(runtime, dict) and runtime.get("state") in (None, "prepared") and not runtime.get("pid"):
        shutil.rmtree(rt, ignore_errors=True)


def reap(root: Path, name: str | None = None, *, locked: bool = False) -> list[str]:
    """Remove what killed creates left behind; returns the staging dirs removed.

    :param name: only this workspace's staging dirs.
    :param locked: the caller holds ``name``'s lock; otherwise each name's lock is
        tried without waiting, and a busy name is skipped (its create may be live).
    """
    from microagent.workspace.lock import WorkspaceLock
    from microagent.workspace.manifest import manifest_path

    removed = []
    for ws, stage in stale(root, name):
        if locked:
            remove(stage)
            _remove_prepared_runtime(root, ws)
            removed.append(stage.name)
            continue
        lock = WorkspaceLock(root, ws, "reap", timeout=0)
        try:
            lock.acquire()
        except Conflict:
            continue
        try:
            if not _creator_alive(stage):
                remove(stage)
                _remove_prepared_runtime(root, ws)
                removed.append(stage.name)
            lock.unlink_on_release = not manifest_path(root, ws).exists()
        finally:
            lock.release(unlink=lock.unlink_on_release)
    return removed
