"""commit, clone and stats with real QEMU guests (builtin:busybox)."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from microagent.images.pull import pull
from microagent.paths import host_arch
from microagent.sdk import Workspace, run
from support_registry import RegistryServer

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MICROAGENT, *args], capture_output=True, text=True, timeout=300)


def _layer_names(root: Path, digest: str) -> set[str]:
    data = (root / "images" / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        return set(tar.getnames())


@pytest.fixture(scope="module")
def committed(vm_root: Path) -> Any:
    """Workspace ``src`` after a guest wrote a file and deleted a base file, halted."""
    ws = Workspace.create("src", state_dir=vm_root)  # booted
    try:
        res = ws.exec(["sh", "-c", "echo from-the-guest > /root/made.txt && rm /etc/os-release && sync"])
        assert res.exit_code == 0, res
        busy = cli("commit", "src", "refused:v1")  # running: refused, naming the state
        assert busy.returncode != 0 and "is running; commit needs one of: prepared, stopped, halted" in busy.stderr
        ws.halt()
        yield ws
    finally:
        ws.delete(force=True)


def test_commit_then_run_sees_the_file_and_not_the_deleted_one(vm_root: Path, committed: Workspace) -> None:
    proc = cli("commit", "--json", "src", "committed/img:v1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["full"] is False and doc["base"] and doc["destination"] == "cache"
    names = _layer_names(vm_root, doc["layer"]["digest"])
    assert "root/made.txt" in names and "etc/.wh.os-release" in names
    assert not names & {"etc/hosts", "etc/resolv.conf", "sbin/microagent-init"}
    result = run("committed/img:v1", ["sh", "-c", "cat /root/made.txt; test -e /etc/os-release || echo gone"],
                 state_dir=vm_root)
    assert result.exit_code == 0, result
    assert result.stdout == b"from-the-guest\ngone\n"


def test_commit_twice_gives_the_same_digest(vm_root: Path, committed: Workspace) -> None:
    first = committed.commit("committed/twice:v1")
    second = committed.commit("committed/twice:v2")
    layout = committed.commit(f"oci:{vm_root / 'layout'}:v1")
    assert first["digest"] == second["digest"] == layout["digest"]


def test_commit_push_to_a_real_registry(vm_root: Path, committed: Workspace, registry: RegistryServer,
                                        tmp_path: Path) -> None:
    ref = f"{registry.host}/commit/vm:v1"
    proc = cli("commit", "--json", "--push", "src", ref)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["destination"] == "registry" and doc["blobsPushed"] >= 2  # base layer, new layer, config
    pulled = pull(ref, tmp_path / "fresh-state", architecture=host_arch(), policy="always")
    assert pulled.digest == doc["digest"] and len(pulled.layers) == 2  # busybox's layer, then the commit's


def test_clone_boots_with_the_file_and_diverges(vm_root: Path, committed: Workspace) -> None:
    twin = committed.clone("twin")
    try:
        assert cli("clone", "src", "twin").returncode != 0  # the name is taken
        twin.start()
        assert twin.exec(["cat", "/root/made.txt"]).stdout == b"from-the-guest\n"
        twin.exec(["sh", "-c", "echo twin-only > /root/twin.txt && sync"])
        assert cli("clone", "twin", "nope").returncode != 0  # running: refused
        twin.kill()
        committed.start()
        try:
            res = committed.exec(["sh", "-c", "cat /root/made.txt; test -e /root/twin.txt && echo leaked"])
            assert res.stdout == b"from-the-guest\n"
        finally:
            committed.halt()
    finally:
        twin.delete(force=True)


def test_stats_of_a_running_workspace(vm_root: Path, committed: Workspace) -> None:
    committed.start()
    try:
        for _ in range(3):
            assert committed.exec(["true"]).exit_code == 0
        time.sleep(0.8)  # the helper publishes its exec count at most twice a second
        proc = cli("stats", "--json", "src")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert isinstance(doc["execCount"], int) and doc["execCount"] >= 3, doc["execCount"]
        vmm = doc["processes"]["vmm"]
        assert vmm["cpuSeconds"] > 0 and 50 << 20 < vmm["rssBytes"] < 4 << 30 and vmm["pssBytes"] > 0
        assert "channelHelper" in doc["processes"] and doc["cpuSeconds"] >= vmm["cpuSeconds"]
        mem = doc["guestMemory"]
        assert 0.5 < mem["totalBytes"] / (doc["resources"]["memoryMiB"] << 20) <= 1.0
        assert 0 < mem["usedBytes"] < mem["totalBytes"]
        assert 0 < doc["disk"]["allocatedBytes"] <= doc["disk"]["apparentBytes"]
        assert "network" not in doc  # isolated: no TAP
    finally:
        committed.halt()
    at_rest = json.loads(cli("stats", "--json", "src").stdout)
    assert at_rest["processes"] == {} and "guestMemory" not in at_rest and at_rest["state"] == "halted"


def test_commit_of_a_killed_workspace_has_its_synced_writes(vm_root: Path) -> None:
    """A ``stopped`` (SIGKILLed) workspace commits too.  (Whatever its journal still holds is
    replayed first; this guest's ``sync`` had written everything in place already, so the test
    does not tell the replay apart: measured by disabling it.)"""
    ws = Workspace.create("crash", state_dir=vm_root)
    try:
        assert ws.exec(["sh", "-c", "echo journaled > /root/after-kill.txt && sync"]).exit_code == 0
        ws.kill()
        doc = ws.commit("committed/crash:v1")
        assert "root/after-kill.txt" in _layer_names(vm_root, doc["layer"]["digest"])
    finally:
        ws.delete(force=True)
