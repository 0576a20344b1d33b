"""A full host disk under a running VM.

The state directory lives on a small tmpfs; a filler file leaves a few MiB
free and the guest writes more than that.  QEMU pauses the VM (its writes
wait for space); the workspace must read ``paused`` (host disk full), exec
must fail at once with ``resource_exhausted``, kill and delete -f must work
although nothing can be written, and resume must continue the guest once
the filler is gone, its data intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from fault_support import MICROAGENT, Faults
from microagent.paths import host_arch, kernel_dir, state_root
from support import vmm_processes

GUEST_WRITE_MIB = 24
PATTERN_CMD = f"yes abcdefgh | head -c {GUEST_WRITE_MIB * 2**20} > /big && sync && echo written"


@pytest.fixture
def full(tmp_path: Path) -> Iterator[Faults]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 is not installed (run 'make install')")
    src = kernel_dir(state_root(None), "qemu", host_arch())
    if not (src / "kernel.json").is_file():
        pytest.skip("no qemu kernel in the default state root (run 'make install')")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256M,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        root = mnt / "state"
        shutil.copytree(src, kernel_dir(root, "qemu", host_arch()), ignore=shutil.ignore_patterns("initramfs-*"))
        yield Faults(root)
    finally:
        for line in vmm_processes(str(mnt)):
            try:
                os.kill(int(line.split()[0]), 9)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.2)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(root: Path, leave_mib: int = 4) -> Path:
    """A filler file taking all but ``leave_mib`` MiB of the state directory's file system."""
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    filler = root.parent / "filler"
    with open(filler, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, max(0, free - leave_mib * 2**20))
    return filler


def _boot_and_fill(full: Faults) -> tuple[subprocess.Popen[str], Path]:
    """Start ws, leave little space, let the guest write more: returns the writing exec and the filler."""
    for args in (("create", "ws", "--disk-size", "128"), ("start", "ws")):
        code, doc = full.run(*args, timeout=300)
        assert code == 0, doc
    filler = _fill(full.root)
    writer = subprocess.Popen([MICROAGENT, "exec", "ws", "--", "sh", "-c", PATTERN_CMD],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full.env)
    deadline = time.monotonic() + 90
    while True:
        code, status = full.run("status", "ws")
        if status.get("state") == "paused":
            break
        assert writer.poll() is None, ("the guest's write ended before the disk filled", writer.communicate())
        assert time.monotonic() < deadline, f"never paused: {status}"
        time.sleep(0.5)
    assert code == 0 and "host disk full" in status["detail"], status
    assert status["alive"], status
    return writer, filler


def test_full_disk_pauses_then_resume_continues(full: Faults) -> None:
    writer, filler = _boot_and_fill(full)
    code, listed = full.run("list")
    assert code == 0 and listed["workspaces"][0]["state"] == "paused", listed

    started = time.monotonic()
    proc = subprocess.run([MICROAGENT, "exec", "ws", "--json", "--timeout", "5", "--", "true"],
                          capture_output=True, text=True, env=full.env, timeout=30)
    assert time.monotonic() - started < 4, "exec did not fail fast"
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    assert proc.returncode != 0 and doc["error"]["kind"] == "resource_exhausted", doc
    assert "host disk full" in doc["error"]["message"], doc

    code, doc = full.run("resume", "ws")  # still no space: refused, still paused
    assert code != 0 and doc["error"]["kind"] == "resource_exhausted", doc
    code, status = full.run("status", "ws")
    assert status["state"] == "paused", status

    filler.unlink()  # space is back
    code, doc = full.run("resume", "ws")
    assert code == 0 and doc["state"] == "running", doc
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0 and "written" in out, (out, err)

    want = hashlib.sha256((b"abcdefgh\n" * (GUEST_WRITE_MIB * 2**20 // 9 + 1))[:GUEST_WRITE_MIB * 2**20]).hexdigest()
    check = subprocess.run([MICROAGENT, "exec", "ws", "--", "sh", "-c", "sync; sha256sum /big"],
                           capture_output=True, text=True, env=full.env, timeout=60)
    assert check.returncode == 0 and check.stdout.split()[0] == want, check
    code, status = full.run("status", "ws")
    assert status["state"] == "running" and status["readiness"]["execReady"]["ready"], status
    assert full.run("kill", "ws")[0] == 0
    assert full.run("delete", "ws")[0] == 0
    full.check_clean()


def test_kill_and_delete_work_while_the_disk_is_full(full: Faults) -> None:
    writer, filler = _boot_and_fill(full)
    code, doc = full.run("halt", "ws")  # halt needs the guest: a clear refusal, no traceback
    assert code != 0 and doc["error"]["kind"] == "conflict" and "resume" in doc["error"]["remediation"], doc
    code, doc = full.run("kill", "ws")
    assert code == 0 and doc["state"] == "stopped", doc
    writer.communicate(timeout=30)
    status = full.check_reconciled("ws")
    assert status["state"] in ("stopped", "failed") and not status["alive"], status
    code, doc = full.run("start", "ws")  # no space to boot: said so, no traceback
    assert code != 0, doc
    code, doc = full.run("delete", "-f", "ws")
    assert code == 0 and doc["deleted"], doc
    filler.unlink()
    full.check_clean()
