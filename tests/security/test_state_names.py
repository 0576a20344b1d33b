"""Workspace names: no trailing newline, no collision with the state root's own folders,
and old-layout runtime directories moved forward without losing anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from microagent.errors import InvalidRequest
from microagent.paths import host_arch, kernel_dir, state_root
from microagent.vmkit.types import is_safe_name, parse_request
from microagent.workspace.lifecycle import check_name

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(state: Path, *args: str, expect: int | None = 0) -> dict[str, Any]:
    proc = subprocess.run([MICROAGENT, *args, "--json"], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MICROAGENT_STATE_DIR": str(state),
                               "HOME": str(state), "MICROAGENT_BACKEND": "qemu"})
    if expect is not None:
        assert proc.returncode == expect, (proc.stdout, proc.stderr)
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state root with the installed qemu kernel (create builds a real disk; nothing boots)."""
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if not (src / "kernel.json").is_file():
        pytest.skip(f"no qemu kernel in {src} (run 'make install')")
    root = tmp_path / "state"
    shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
    os.chmod(root, 0o700)
    return root


@pytest.mark.parametrize("name", ["ws\n", "ws\r", "\nws", "ws\n\n", "a" * 62 + "\n"])
def test_a_name_with_a_newline_is_refused(name: str) -> None:
    assert not is_safe_name(name)
    with pytest.raises(InvalidRequest):
        check_name(name)
    doc = {"command": "inspect", "identity": {"requestID": "r", "runtimeID": name, "role": "workload",
                                              "backend": "qemu"}, "config": {"stateDir": "/tmp/x"}}
    with pytest.raises(InvalidRequest, match="not a safe name"):
        parse_request(doc)


def test_the_cli_refuses_a_trailing_newline(tmp_path: Path) -> None:
    doc = cli(tmp_path, "create", "ws\n", expect=2)  # a bad argument is a usage error
    assert doc["error"]["kind"] == "permanent" and "is not a safe name" in doc["error"]["message"]
    assert not (tmp_path / "workspaces").exists()


def test_workspaces_named_like_state_folders_leave_the_state_alone(state: Path) -> None:
    cli(state, "create", "keep", "--profile", "tiny")
    index = state / "images" / "index.json"
    kernel = kernel_dir(state, "qemu", host_arch()) / "kernel.json"
    assert index.is_file() and kernel.is_file()
    for name in ("workspaces", "images", "kernels", "locks", "run"):
        doc = cli(state, "create", name, "--profile", "tiny")
        assert doc["state"] == "prepared"
        assert (state / "run" / name / "runtime.json").is_file()
    for name in ("workspaces", "images", "kernels", "locks", "run"):
        assert cli(state, "delete", name)["deleted"] is True
        assert not (state / "run" / name).exists() and not (state / "workspaces" / name).exists()
    assert (state / "workspaces" / "keep" / "workspace.json").is_file()
    assert (state / "workspaces" / "keep" / "rootfs.ext4").is_file()
    assert (state / "run" / "keep" / "runtime.json").is_file()
    assert index.is_file() and kernel.is_file() and (state / "images" / "blobs").is_dir()
    assert [w["name"] for w in cli(state, "list")["workspaces"]] == ["keep"]
    assert cli(state, "status", "keep")["state"] == "prepared"


def test_an_old_layout_runtime_dir_is_moved_forward(state: Path) -> None:
    cli(state, "create", "mig", "--profile", "tiny")
    os.rename(state / "run" / "mig", state / "mig")  # the previous layout: <root>/<name>
    events_before = (state / "mig" / "events.jsonl").read_text()
    assert cli(state, "status", "mig")["state"] == "prepared"
    assert not (state / "mig").exists()
    assert (state / "run" / "mig" / "events.jsonl").read_text().startswith(events_before)
    assert cli(state, "delete", "mig")["deleted"] is True
    assert not (state / "run" / "mig").exists()


def test_an_old_layout_dir_recorded_live_is_used_in_place(state: Path) -> None:
    cli(state, "create", "live", "--profile", "tiny")
    os.rename(state / "run" / "live", state / "live")
    runtime = json.loads((state / "live" / "runtime.json").read_text())
    runtime.update(state="running", pid=2 ** 22 - 1, starttime=1)  # a VMM that is gone
    (state / "live" / "runtime.json").write_text(json.dumps(runtime))
    # a VMM may run there: the directory is reconciled where it is, never moved under it
    assert cli(state, "status", "live")["state"] == "failed"
    assert (state / "live" / "runtime.json").is_file() and not (state / "run" / "live").exists()
    assert cli(state, "delete", "live")["deleted"] is True
    assert not (state / "live").exists() and not (state / "workspaces" / "live").exists()


def test_a_state_folder_is_never_taken_for_an_old_runtime_dir(state: Path) -> None:
    cli(state, "create", "images", "--profile", "tiny")
    shutil.rmtree(state / "run" / "images")
    (state / "images" / "runtime.json").write_text(json.dumps({"state": "prepared", "backend": "qemu"}))
    cli(state, "status", "images")
    assert (state / "images" / "index.json").is_file() and not (state / "run" / "images").exists()
    cli(state, "delete", "images")
    assert (state / "images" / "index.json").is_file() and (state / "images" / "blobs").is_dir()
