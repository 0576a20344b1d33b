"""gc's sweep of guest RAM files on tmpfs: only files nobody maps, and only old ones."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microagent.ramfiles import reap_orphans

_MAPPER = """
import mmap, sys
f = open(sys.argv[1], "r+b")
m = mmap.mmap(f.fileno(), 4096)
f.close()  # the mapping alone keeps it in use, as QEMU's does
print("mapped", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def shm_dir() -> Path:
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm on this host")
    path = Path(f"/dev/shm/microagent-test-{os.getpid()}-{time.monotonic_ns()}")
    path.mkdir(mode=0o700)
    yield path
    for f in path.iterdir():
        f.unlink()
    path.rmdir()


def _ram_file(directory: Path, name: str, age_s: float) -> Path:
    path = directory / name
    path.write_bytes(b"\0" * 4096)
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def test_only_old_files_nobody_maps_are_reaped(shm_dir: Path) -> None:
    orphan = _ram_file(shm_dir, "orphan.ram", age_s=3600)
    mapped = _ram_file(shm_dir, "mapped.ram", age_s=3600)
    young = _ram_file(shm_dir, "young.ram", age_s=0)
    other = _ram_file(shm_dir, "notes.txt", age_s=3600)
    holder = subprocess.Popen([sys.executable, "-c", _MAPPER, str(mapped)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        removed = reap_orphans(min_age_s=60, directory=shm_dir)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert removed == [str(orphan)]
    assert not orphan.exists() and mapped.exists() and young.exists() and other.exists()


def test_a_missing_directory_reaps_nothing(tmp_path: Path) -> None:
    assert reap_orphans(directory=tmp_path / "absent") == []
