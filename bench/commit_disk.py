"""Benchmark: ``commit`` of a Debian 12 minbase disk, as a diff layer and as a full layer.

Setup (not timed): the debootstrap minbase layer the tests build
(``.cache/debootstrap/bookworm-minbase-<arch>.tar.gz``, see
tests/support_registry.py) is unpacked and made into an ext4 base disk with
``mke2fs -d``; the workspace disk is a copy with one file added (as a guest
would, through ``debugfs -w``).

Timed: :func:`microagent.images.commit.commit_disk` against the base disk
(both trees listed with debugfs, compared, one small layer written) and
without a base (every file dumped, tarred and gzipped).

Usage: python bench/commit_disk.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from support_registry import debian_rootfs_layer

    from microagent.images.commit import Base, commit_disk
    from microagent.images.model import Platform

    layer = debian_rootfs_layer()
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        tree.mkdir()
        with tarfile.open(layer) as tar:
            tar.extractall(tree, filter="fully_trusted")  # our own debootstrap output
        files = sum(len(f) + len(d) for _, d, f in os.walk(tree))
        env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"}
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-d", str(tree), str(work / "base.ext4"),
                        "1G"], check=True, env=env)
        shutil.copyfile(work / "base.ext4", work / "ws.ext4")
        (work / "hello").write_text("hello\n")
        subprocess.run(["debugfs", "-w", "-R", f"write {work}/hello /root/hello", str(work / "ws.ext4")],
                       check=True, capture_output=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "1800000000"})
        base = Base(disk=work / "base.ext4", config_json={"architecture": "amd64", "os": "linux"})
        for kind, b in (("diff", base), ("full", Base())):
            times, built = [], None
            for i in range(args.runs):
                state = work / f"state-{kind}-{i}"
                t0 = time.monotonic()
                built = commit_disk(work / "ws.ext4", b, state, platform=Platform("amd64"))
                times.append(time.monotonic() - t0)
                shutil.rmtree(state)
            assert built is not None
            print(f"{kind}: {statistics.median(times):.2f} s median of {args.runs} ({files} paths on the disk; "
                  f"layer {built.layers[-1][2]} bytes, changes {built.changes})")


if __name__ == "__main__":
    main()
