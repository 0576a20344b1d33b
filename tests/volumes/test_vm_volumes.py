"""Volumes and host folders with real QEMU guests (docs/volumes.md).

Boots are the cost, so a few workspaces walk through many checks each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def virtiofsd_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:] if "virtiofs" in line and marker in line
            and line.split()[1][:1] != "Z"]


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MICROAGENT, *args], capture_output=True, text=True, timeout=timeout)


def ok(*args: str) -> str:
    proc = cli(*args)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def error_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(proc.stdout or proc.stderr)
    return doc["error"] if "error" in doc else doc


def test_a_volume_outlives_its_workspaces_and_has_one_writer(vol_root: Path) -> None:
    ok("volume", "create", "cache", "--size", "32")
    ok("run", "builtin:busybox", "--", "true")  # saves the image's boot snapshot...
    # ...which a run with a volume must not restore: its guest never mounted the volume.
    # One run writes, the next reads: the data lives in the volume, not the throwaway disks
    doc = json.loads(ok("run", "--json", "-v", "cache:/cache", "builtin:busybox", "--",
                        "sh", "-c", "echo kept > /cache/note"))
    assert doc["warm"] is False and doc["result"]["exit_code"] == 0, doc
    assert ok("run", "-v", "cache:/cache:ro", "builtin:busybox", "--", "cat", "/cache/note") == "kept\n"
    assert json.loads(ok("volume", "inspect", "cache", "--json"))["attachedTo"] == []  # runs release it

    # the claim is taken at create: a second writer is refused, naming the holder
    ok("create", "holder", "-v", "cache:/data")
    for spec in ("cache:/data", "cache:/data:ro"):  # a reader would see a disk changing under it
        proc = cli("create", "other", "-v", spec, "--json")
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        err = error_of(proc)
        assert err["kind"] == "conflict" and "holder" in err["message"], err
    assert not (vol_root / "workspaces" / "other").exists()
    proc = cli("volume", "rm", "cache", "--json")
    assert proc.returncode == 1 and "holder" in error_of(proc)["message"], (proc.stdout, proc.stderr)

    # the holder's guest sees the data at its own path
    ok("start", "holder")
    assert "volumes:      cache:/data" in ok("status", "holder")
    assert ok("exec", "holder", "--", "cat", "/data/note") == "kept\n"
    ok("exec", "holder", "--", "sh", "-c", "echo again >> /data/note")
    ok("halt", "holder")
    ok("delete", "holder")
    # released with the workspace: another run reads what the holder wrote
    assert ok("run", "-v", "cache:/c", "builtin:busybox", "--", "cat", "/c/note") == "kept\nagain\n"
    ok("volume", "rm", "cache")
    assert "cache" not in ok("volume", "ls")


def test_a_host_folder_is_live_owned_fenced_and_read_only_when_asked(vol_root: Path, tmp_path: Path) -> None:
    share, frozen = tmp_path / "share", tmp_path / "frozen"
    share.mkdir()
    frozen.mkdir()
    (frozen / "keep.txt").write_text("original\n")
    outside = tmp_path / "outside-marker.txt"
    outside.write_text("HOST-SECRET\n")
    os.symlink(str(outside), share / "abs-link")          # absolute, to a host file
    os.symlink("../outside-marker.txt", share / "rel-link")  # relative, climbing out
    ok("create", "folders", "-v", f"{share}:/work", "-v", f"{frozen}:/frozen:ro")
    try:
        ok("start", "folders")

        def guest(cmd: str) -> subprocess.CompletedProcess[str]:
            return cli("exec", "folders", "--", "sh", "-c", cmd)

        # host → guest, live: a file written and then changed on the host
        (share / "from-host.txt").write_text("one\n")
        assert guest("cat /work/from-host.txt").stdout == "one\n"
        (share / "from-host.txt").write_text("two\n")
        deadline = time.monotonic() + 10
        while guest("cat /work/from-host.txt").stdout != "two\n":
            assert time.monotonic() < deadline, "a host edit never reached the guest"
            time.sleep(0.5)

        # guest → host, owned by the user running microagent
        assert guest("echo from-guest > /work/made-in-guest.txt && mkdir /work/dir").returncode == 0
        made = share / "made-in-guest.txt"
        assert made.read_text() == "from-guest\n"
        assert (made.stat().st_uid, made.stat().st_gid) == (os.getuid(), os.getgid())
        assert (share / "dir").stat().st_uid == os.getuid()

        # fenced: symlinks resolve in the guest, .. stops at the guest's root
        for cmd in ("cat /work/abs-link", "cat /work/rel-link", "cat /work/../outside-marker.txt",
                    "cat /work/../../outside-marker.txt", f"cat /work/..{outside}"):
            proc = guest(cmd)
            assert "HOST-SECRET" not in proc.stdout, cmd
            assert proc.returncode != 0, (cmd, proc.stdout)

        # read-only: refused in the guest, and still refused after the guest remounts rw,
        # because the host mounts the folder read-only for the daemon
        assert guest("cat /frozen/keep.txt").stdout == "original\n"
        assert guest("echo x > /frozen/new.txt").returncode != 0
        guest("mount -o remount,rw /frozen")
        proc = guest("echo x > /frozen/keep.txt; echo y > /frozen/new.txt; rm -f /frozen/keep.txt")
        assert proc.returncode != 0
        assert (frozen / "keep.txt").read_text() == "original\n"
        assert sorted(p.name for p in frozen.iterdir()) == ["keep.txt"]

        # no host folder in a snapshot: refused clearly
        proc = cli("snapshot", "create", "folders", "t1", "--json")
        assert proc.returncode == 1 and error_of(proc)["kind"] == "unsupported", (proc.stdout, proc.stderr)
        ok("halt", "folders")
    finally:
        cli("delete", "-f", "folders")
    assert virtiofsd_processes(str(share)) == [] and virtiofsd_processes(str(frozen)) == []
