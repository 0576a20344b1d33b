"""Benchmark: our root disk build vs raw ``mke2fs -d`` of the same unpacked tree.

Setup (not timed): a ~200 MB tree is generated (copies of /usr/lib/python3*
plus incompressible random files, with a few hundred symlinks and hard
links) and packed as one gzip layer, like a registry layer.

Timed, in the same run on the same host:

* **ours**: :func:`build_base_disk`'s work: extract the layer (gunzip, tar,
  safety checks, ledger) + ``mke2fs -d`` + the debugfs metadata step, and
  injecting guest init;
* **raw**: ``mke2fs -t ext4 -d TREE`` of the generated tree, same size.

Usage: python bench/rootfs_build.py [--mb 200] [--runs 1]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from microagent.images.ext4 import build_ext4, default_size_bytes, find_mke2fs
from microagent.images.layers import extract_layers
from microagent.images.model import Layer


def generate_tree(root: Path, target_bytes: int) -> tuple[int, int]:
    """Fill ``root`` with about ``target_bytes``; returns (files, bytes)."""
    total = files = 0
    for src in sorted(Path("/usr/lib").glob("python3*")):
        if total >= target_bytes * 0.6:
            break
        for dirpath, _dirs, names in os.walk(src):
            for n in names:
                p = Path(dirpath) / n
                if p.is_symlink() or not p.is_file():
                    continue
                dst = root / "usr/lib" / p.relative_to("/usr/lib")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
                total += dst.stat().st_size
                files += 1
    rnd = root / "data"
    rnd.mkdir()
    i = 0
    while total < target_bytes:
        size = (64 << 10) * (1 + i % 32)
        (rnd / f"blob{i:05d}").write_bytes(os.urandom(size))
        total += size
        files += 1
        i += 1
    links = root / "links"
    links.mkdir()
    for j, f in enumerate(sorted(rnd.iterdir())[:300]):
        (links / f"sym{j}").symlink_to(f"../data/{f.name}")
        if j % 3 == 0:
            os.link(f, links / f"hard{j}")
    return files, total


def pack_layer(tree: Path, blobs: Path) -> Layer:
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / "layer.tar.gz"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for dirpath, dirs, names in os.walk(tree):
                dirs.sort()
                for n in sorted(dirs + names):
                    p = Path(dirpath) / n
                    info = tf.gettarinfo(str(p), arcname=str(p.relative_to(tree)))
                    info.mtime = int(info.mtime)  # whole seconds, as docker/buildkit write layers
                    if info.isreg():
                        with open(p, "rb") as fh:
                            tf.addfile(info, fh)
                    else:
                        tf.addfile(info)
    h = hashlib.sha256()
    with open(tmp, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return Layer("sha256:" + h.hexdigest(), "application/vnd.oci.image.layer.v1.tar+gzip", tmp.stat().st_size, tmp)


def ours(layer: Layer, work: Path, size: int) -> dict[str, float]:
    stage = work / "stage"
    stage.mkdir()
    t0 = time.monotonic()
    ledger = extract_layers([layer], stage)
    t1 = time.monotonic()
    timings: dict[str, float] = {}
    build_ext4(stage, work / "ours.ext4", key=layer.digest, size_bytes=size, ledger=ledger, timings=timings)
    t2 = time.monotonic()
    shutil.rmtree(stage)
    (work / "ours.ext4").unlink()
    return {"extract": t1 - t0, "mke2fs": timings["mke2fs"], "metadata": timings["metadata"], "total": t2 - t0,
            "inodes": float(len(ledger))}


def raw(tree: Path, work: Path, size: int) -> float:
    img = work / "raw.ext4"
    with open(img, "wb") as fh:
        fh.truncate(size)
    t0 = time.monotonic()
    subprocess.run([find_mke2fs(), "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(tree), str(img)], check=True)
    t = time.monotonic() - t0
    img.unlink()
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rootfs-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        tree = work / "tree"
        tree.mkdir()
        files, total = generate_tree(tree, args.mb << 20)
        layer = pack_layer(tree, work / "blobs")
        size = default_size_bytes(tree, extra_inodes=files)
        print(f"tree: {files} files, {total / 2**20:.0f} MiB; layer {layer.size / 2**20:.0f} MiB gzip; "
              f"disk {size / 2**20:.0f} MiB", file=sys.stderr)
        subprocess.run(["sync"], check=False)
        mine: list[dict[str, float]] = []
        base: list[float] = []
        for _ in range(args.runs):
            base.append(raw(tree, work, size))
            mine.append(ours(layer, work, size))
        med = {k: statistics.median(r[k] for r in mine) for k in mine[0]}
        raw_s = statistics.median(base)
        print(f"raw mke2fs -d (same tree)      {raw_s:7.2f} s")
        print(f"ours: full build               {med['total']:7.2f} s   "
              f"(extract {med['extract']:.2f} + mke2fs {med['mke2fs']:.2f} + metadata {med['metadata']:.2f}; "
              f"{int(med['inodes'])} paths)")
        print(f"ratio ours / raw               {med['total'] / raw_s:7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
