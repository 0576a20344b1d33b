"""``run --output HOST_DIR=/guest/path`` with a real QEMU guest (docs/volumes.md, "Outputs").

One boot walks through a directory tree, a single file, a guest symlink (skipped), and a host
symlink already in the destination (replaced, never written through); a second shows the budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from microagent.errors import ResourceExhausted

MICROAGENT = str(Path(sys.executable).parent / "microagent")

_MAKE_TREE = ("mkdir -p /work/out/sub/deeper && echo top > /work/out/a.txt && "
              "echo nested > /work/out/sub/deeper/b.txt && ln -s /etc/passwd /work/out/link && "
              "echo alone > /work/report.txt && echo hi > /work/out/victim && exit 3")


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MICROAGENT, *args], capture_output=True, text=True, timeout=timeout)


def test_outputs_copy_files_and_trees_back_after_the_command(vol_root: Path, tmp_path: Path) -> None:
    out, single = tmp_path / "out", tmp_path / "single"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    os.symlink(outside, out / "victim")  # the guest's "victim" must replace this link, not write through it
    proc = cli("run", "--json", "--output", f"{out}=/work/out", "--output", f"{single}=/work/report.txt",
               "builtin:busybox", "--", "sh", "-c", _MAKE_TREE)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)  # the command's code; outputs copied anyway
    doc = json.loads(proc.stdout)
    assert [(o["guest"], o["files"]) for o in doc["outputs"]] == [("/work/out", 3), ("/work/report.txt", 1)]
    assert (out / "a.txt").read_text() == "top\n"
    assert (out / "sub" / "deeper" / "b.txt").read_text() == "nested\n"
    assert (single / "report.txt").read_text() == "alone\n"
    assert not os.path.lexists(out / "link")  # guest symlinks are skipped
    assert not (out / "victim").is_symlink() and (out / "victim").read_text() == "hi\n"
    assert outside.read_text() == "untouched\n"
    assert (out / "a.txt").stat().st_mode & 0o777 == 0o600
    assert (out / "sub").stat().st_mode & 0o777 == 0o700
    assert not [p for p in out.rglob(".*microagent-*")]  # no temp files left


def test_output_errors_are_clear(vol_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = cli("run", "--output", f"{blocker}=/work", "builtin:busybox", "--", "true")
    assert proc.returncode == 2 and "not a directory" in proc.stderr, (proc.stdout, proc.stderr)
    proc = cli("run", "--output", f"{tmp_path}/missing=/nope", "builtin:busybox", "--", "true")
    assert proc.returncode != 0 and "/nope does not exist in the guest" in proc.stderr, proc.stderr


def test_the_output_budget_is_enforced(vol_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from microagent.sdk import run
    from microagent.workspace import outputs

    monkeypatch.setattr(outputs, "MAX_BYTES", 64 * 1024)  # the run happens in this process
    with pytest.raises(ResourceExhausted, match="more than 65536 bytes"):
        run("builtin:busybox", ["sh", "-c", "mkdir /o && head -c 200000 /dev/zero > /o/big"],
            outputs=[f"{tmp_path / 'o'}=/o"], state_dir=vol_root)
