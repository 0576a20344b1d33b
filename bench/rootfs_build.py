"""Benchmark: our faithful root disk build vs the naive ``tar -xzf`` + ``mke2fs -d`` pipeline.

Setup (not timed): a ~200 MiB tree is generated (copies of /usr/lib/python3*
plus incompressible random files, a few hundred symlinks and hard links) and
packed as one gzip layer, like a registry layer.  The layer also carries what
only a faithful build keeps: other owners, setuid/setgid/sticky modes,
extended attributes (a file capability), device nodes, a FIFO and
sub-second mtimes.

Timed, in the same run on the same host, on the same layer and disk size:

* **naive**: ``tar -xzf LAYER -C DIR`` + ``mke2fs -t ext4 -d DIR`` (no
  safety checks, no ledger, no metadata pass; what it keeps depends on who
  runs it);
* **ours**: :func:`extract_layers` (gunzip, tar, safety checks, ledger) +
  :func:`build_ext4` (``mke2fs -d`` + the debugfs metadata pass).

Then the **fidelity check** reads a sample of inodes (every special entry
plus every 50th path) back from both images with debugfs and compares them
with the layer's own tar headers (type, mode, owner, mtime seconds, device
numbers, xattrs, link counts).

Each run times both builds back to back (alternating which goes first, so
neither always pays for the other's writeback); the figures printed are
medians over ``--runs``, and the ratio is the median of the per-run ratios.
Staging trees are deleted only at the end: on an ext4 without a journal
(``perf`` shows ``recently_deleted`` in every create here) the kernel skips
inodes freed in the last 30 s when it allocates new ones, so a run after a
large delete pays for it on every create, whichever build it is (so the
bench keeps about 0.4 GiB per run in TMPDIR until it ends).

Usage: python bench/rootfs_build.py [--mb 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from microagent.images.ext4 import build_ext4, default_size_bytes, find_mke2fs
from microagent.images.layers import extract_layers
from microagent.images.metadata import find_debugfs
from microagent.images.model import Layer

#: figures before the staging writer process and the overlapped metadata plan (issue #15)
OLD = "before: 1.08x-1.5x; ours 2.63 s, extract 1.94 s"
CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep


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


def _special_entries() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Entries only a faithful build keeps (owners, modes, xattrs, devices)."""
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []

    def add(name: str, type_: bytes, mode: int, data: bytes | None = None, **kw: object) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = type_, mode, 1_600_000_000
        for k, v in kw.items():
            setattr(ti, k, v)
        if data is not None:
            ti.size = len(data)
        out.append((ti, data))

    add("fid", tarfile.DIRTYPE, 0o755)
    add("fid/dev", tarfile.DIRTYPE, 0o755)
    add("fid/dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3)
    add("fid/dev/sda", tarfile.BLKTYPE, 0o660, gid=6, devmajor=8, devminor=0)
    add("fid/dev/initctl", tarfile.FIFOTYPE, 0o600)
    add("fid/tmp", tarfile.DIRTYPE, 0o1777)
    add("fid/passwd", tarfile.REGTYPE, 0o4755, b"pw")
    add("fid/wall", tarfile.REGTYPE, 0o2755, b"w", gid=5)
    add("fid/ping", tarfile.REGTYPE, 0o755, b"p",
        pax_headers={"SCHILY.xattr.security.capability": CAP.decode("latin-1")})
    add("fid/home", tarfile.DIRTYPE, 0o700, uid=1000, gid=1000)
    add("fid/home/notes", tarfile.REGTYPE, 0o600, b"n", uid=1000, gid=1000,
        pax_headers={"mtime": "1600000000.5"})
    return out


def pack_layer(tree: Path, blobs: Path) -> Layer:
    """One gzip layer of ``tree`` (PAX, whole-second mtimes, ids of the build host) plus the special entries."""
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
                    info.uname = info.gname = ""
                    if info.isreg():
                        with open(p, "rb") as fh:
                            tf.addfile(info, fh)
                    else:
                        tf.addfile(info)
            for info, data in _special_entries():
                tf.addfile(info, None if data is None else _Bytes(data))
    h = hashlib.sha256()
    with open(tmp, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return Layer("sha256:" + h.hexdigest(), "application/vnd.oci.image.layer.v1.tar+gzip", tmp.stat().st_size, tmp)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        out, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return out


def ours(layer: Layer, work: Path, size: int, run: int) -> dict[str, float]:
    stage = work / f"stage-{run}"
    stage.mkdir()
    (work / "ours.ext4").unlink(missing_ok=True)  # a previous run's image: not this build's work
    t0 = time.monotonic()
    ledger = extract_layers([layer], stage)
    t1 = time.monotonic()
    timings: dict[str, float] = {}
    build_ext4(stage, work / "ours.ext4", key=layer.digest, size_bytes=size, ledger=ledger, timings=timings)
    t2 = time.monotonic()
    return {"extract": t1 - t0, "mke2fs": timings["mke2fs"], "metadata": timings["metadata"], "total": t2 - t0,
            "inodes": float(len(ledger))}


def naive(layer: Layer, work: Path, size: int, run: int) -> dict[str, float]:
    stage = work / f"naive-stage-{run}"
    stage.mkdir()
    img = work / "naive.ext4"
    img.unlink(missing_ok=True)
    t0 = time.monotonic()
    subprocess.run(["tar", "-xzf", str(layer.path), "-C", str(stage)], check=True)
    t1 = time.monotonic()
    with open(img, "wb") as fh:
        fh.truncate(size)
    subprocess.run([find_mke2fs(), "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(stage), str(img)], check=True)
    t2 = time.monotonic()
    return {"extract": t1 - t0, "mke2fs": t2 - t1, "total": t2 - t0}


# -- fidelity ----------------------------------------------------------------------

_TYPES = {tarfile.REGTYPE: "regular", tarfile.AREGTYPE: "regular", tarfile.DIRTYPE: "directory",
          tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "character special",
          tarfile.BLKTYPE: "block special", tarfile.FIFOTYPE: "FIFO", tarfile.LNKTYPE: "regular"}


def expected(layer: Layer) -> dict[str, dict[str, object]]:
    """What the layer's own headers say about a sample of its paths."""
    members = list(tarfile.open(layer.path, "r:gz"))
    links: dict[str, int] = {}
    for m in members:
        if m.islnk():
            links[m.linkname] = links.get(m.linkname, 1) + 1
            links[m.name] = -1  # resolved below
    want: dict[str, dict[str, object]] = {}
    for i, m in enumerate(members):
        if not (m.name.startswith("fid") or i % 50 == 0 or m.islnk()):
            continue
        target = m.linkname if m.islnk() else m.name
        src = next(x for x in members if x.name == target) if m.islnk() else m
        w: dict[str, object] = {"type": _TYPES[src.type], "uid": src.uid, "gid": src.gid,
                                "mtime": int(float(src.pax_headers.get("mtime", src.mtime)))}
        if not src.issym():
            w["mode"] = src.mode & 0o7777
        if src.ischr() or src.isblk():
            w["dev"] = (src.devmajor, src.devminor)
        if src.isreg():
            w["links"] = links.get(target, 1)
        w["xattrs"] = sorted(k[len("SCHILY.xattr."):] for k in src.pax_headers if k.startswith("SCHILY.xattr."))
        want[m.name] = w
    return want


_STAT = {
    "type": re.compile(r"Type: (.+?)\s+Mode:\s+(\d+)"),
    "owner": re.compile(r"User:\s+(\d+)\s+Group:\s+(\d+)"),
    "links": re.compile(r"Links: (\d+)"),
    "mtime": re.compile(r"^ ?mtime: 0x([0-9a-f]+)", re.M),
    "dev": re.compile(r"Device major/minor number: ([0-9a-f]+):([0-9a-f]+)"),
}


def observed(image: Path, paths: list[str]) -> dict[str, dict[str, object]]:
    cmds = image.with_suffix(".stat")
    cmds.write_text("".join(f'stat "/{p}"\n' for p in paths))
    out = subprocess.run([find_debugfs(), "-f", str(cmds), str(image)], capture_output=True, text=True,
                         errors="replace").stdout
    blocks = out.split("debugfs: ")[1:]
    got: dict[str, dict[str, object]] = {}
    for p, block in zip(paths, blocks):
        t = _STAT["type"].search(block)
        if t is None:
            continue
        o = _STAT["owner"].search(block)
        ln = _STAT["links"].search(block)
        mt = _STAT["mtime"].search(block)
        d = _STAT["dev"].search(block)
        g: dict[str, object] = {"type": t.group(1), "mode": int(t.group(2), 8) & 0o7777,
                                "uid": int(o.group(1)) if o else None, "gid": int(o.group(2)) if o else None,
                                "links": int(ln.group(1)) if ln else None,
                                "mtime": int(mt.group(1), 16) if mt else None}
        if d:
            # debugfs prints the 16-bit old encoding's fields for small numbers
            g["dev"] = (int(d.group(1), 16), int(d.group(2), 16))
        xa = block.partition("Extended attributes:\n")[2]
        g["xattrs"] = sorted(line.split()[0] for line in xa.splitlines()
                             if line.startswith("  ") and "=" in line and not line.strip().startswith("("))
        got[p] = g
    return got


def fidelity(layer: Layer, image: Path, want: dict[str, dict[str, object]]) -> tuple[int, int, list[str]]:
    got = observed(image, sorted(want))
    checks = bad = 0
    samples: list[str] = []
    for p, w in want.items():
        g = got.get(p, {})
        for k, v in w.items():
            checks += 1
            if g.get(k) != v:
                bad += 1
                if len(samples) < 4:
                    samples.append(f"/{p} {k}: want {v!r}, got {g.get(k)!r}")
    return checks, bad, samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rootfs-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        tree = work / "tree"
        tree.mkdir()
        files, total = generate_tree(tree, args.mb << 20)
        layer = pack_layer(tree, work / "blobs")
        size = default_size_bytes(tree, extra_inodes=files)
        print(f"tree: {files} files, {total / 2**20:.0f} MiB; layer {layer.size / 2**20:.0f} MiB gzip; "
              f"disk {size / 2**20:.0f} MiB")
        mine: list[dict[str, float]] = []
        base: list[dict[str, float]] = []
        pair = ((base, naive), (mine, ours))
        for i in range(max(args.runs, 1)):
            for row, run in (pair if i % 2 == 0 else pair[::-1]):
                os.sync()  # neither side pays for the other's writeback
                row.append(run(layer, work, size, i))
        med = {k: statistics.median(r[k] for r in mine) for k in mine[0]}
        nav = {k: statistics.median(r[k] for r in base) for k in base[0]}
        ratios = sorted(m["total"] / b["total"] for m, b in zip(mine, base))
        print(f"naive tar -xzf + mke2fs -d      {nav['total']:7.2f} s   "
              f"(tar {nav['extract']:.2f} + mke2fs {nav['mke2fs']:.2f})")
        print(f"ours: faithful build            {med['total']:7.2f} s   "
              f"(extract {med['extract']:.2f} + mke2fs {med['mke2fs']:.2f} + metadata {med['metadata']:.2f}; "
              f"{int(med['inodes'])} paths)")
        print(f"ratio ours / naive              {statistics.median(ratios):7.2f}x   (median of {len(ratios)} runs, "
              f"{ratios[0]:.2f}-{ratios[-1]:.2f}; {OLD})")
        want = expected(layer)
        for label, image in (("ours", work / "ours.ext4"), ("naive", work / "naive.ext4")):
            checks, bad, samples = fidelity(layer, image, want)
            verdict = "exact" if not bad else f"{bad} differ"
            print(f"fidelity {label:5} {checks} checks on {len(want)} sampled paths: {verdict}"
                  + "".join(f"\n    {s}" for s in samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
