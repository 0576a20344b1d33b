"""Host folders and ``--output`` on Firecracker, which has no shared filesystem (docs/volumes.md).

One ``run`` (one ~30 s slow-lane boot): a host folder arrives as a read-only ext4 copy, a
``:rw`` one as a writable copy whose changes stay in the guest, and ``--output`` copies a
guest directory back over the channel before the VM goes away.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firecracker_slow.slow_state import SlowState, report
from firecracker_slow.test_slow_lane import BOOT_TIMEOUT_S

_SCRIPT = (
    "cat /in/hello.txt; "
    "if touch /in/new 2>/dev/null; then echo IN-WRITABLE; else echo in-read-only; fi; "
    "echo scratch > /scratch/s.txt && cat /scratch/s.txt; "
    "grep -E ' /(in|scratch) ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1; "
    "mkdir -p /out/sub && cp /in/hello.txt /out/copied.txt && echo result > /out/sub/r.txt")


@pytest.mark.timeout(1200)
def test_folder_snapshots_and_outputs_on_firecracker(fc_slow_state: SlowState, tmp_path: Path) -> None:
    state = fc_slow_state
    folder, scratch, out = tmp_path / "project", tmp_path / "scratch", tmp_path / "out"
    folder.mkdir()
    scratch.mkdir()
    (folder / "hello.txt").write_text("from host\n")
    proc = state.cli("run", "--backend", "firecracker", "--boot-timeout", str(BOOT_TIMEOUT_S), "--json",
                     "-v", f"{folder}:/in", "-v", f"{scratch}:/scratch:rw", "--output", f"{out}=/out",
                     "builtin:busybox", "--", "sh", "-c", _SCRIPT, timeout=BOOT_TIMEOUT_S + 120)
    assert proc.returncode == 0, (proc.stdout.decode(), proc.stderr.decode())
    doc = json.loads(proc.stdout)
    lines = doc["result"]["stdout"].splitlines()
    assert lines == ["from host", "in-read-only", "scratch", "/in ro", "/scratch rw"], lines
    assert (out / "copied.txt").read_text() == "from host\n" and (out / "sub" / "r.txt").read_text() == "result\n"
    assert [o["files"] for o in doc["outputs"]] == [2]
    assert not (scratch / "s.txt").exists()  # a :rw copy's changes are not written back
    assert not (folder / "new").exists()
    assert not list((state.root / "workspaces").glob("*"))  # the run's disks, copies included, are gone
    report(f"firecracker slow lane, folders + --output: {doc['timings']}")
