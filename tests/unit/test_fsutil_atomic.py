"""The one atomic write, in its three shapes: bytes, a stream, a path for another program."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from microagent.fsutil import atomic_path, atomic_write, atomic_writer


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o600
    atomic_write(target, b"x", mode=0o755)
    assert target.stat().st_mode & 0o777 == 0o755
    assert _leftovers(tmp_path) == []


def test_atomic_writer_streams_and_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f"
    with atomic_writer(target) as fh:
        fh.write(b"a")
        assert not target.exists()  # nothing visible before the block ends
        fh.write(b"b")
    assert target.read_bytes() == b"ab"
    with pytest.raises(RuntimeError), atomic_writer(target) as fh:
        fh.write(b"partial")
        raise RuntimeError
    assert target.read_bytes() == b"ab" and _leftovers(tmp_path) == []


def test_atomic_writer_keeps_a_mode_the_writer_sets(tmp_path: Path) -> None:
    with atomic_writer(tmp_path / "f") as fh:
        os.fchmod(fh.fileno(), 0o640)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


def test_atomic_path_for_another_program(tmp_path: Path) -> None:
    target = tmp_path / "f"
    with atomic_path(target, mode=0o700) as tmp:
        assert tmp.parent == tmp_path and tmp.stat().st_size == 0
        subprocess.run(["sh", "-c", f"printf hi > '{tmp}'"], check=True)
    assert target.read_bytes() == b"hi" and target.stat().st_mode & 0o777 == 0o700
    with pytest.raises(OSError), atomic_path(target):
        raise OSError("the program failed")
    assert target.read_bytes() == b"hi" and _leftovers(tmp_path) == []


def test_a_long_name_still_fits_name_max(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 250)
    atomic_write(target, b"x")
    assert target.read_bytes() == b"x"
