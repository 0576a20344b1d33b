"""ext4 disk images from a directory tree, with ``mke2fs -d``, then debugfs.

Deterministic by construction: the UUID and directory hash seed derive from a
caller-given key, ``E2FSPROGS_FAKE_TIME`` pins every timestamp mke2fs and
debugfs write, mke2fs 1.47 walks directories in sorted order, and the
output is a freshly truncated file (all zeroes, so ``assume_storage_prezeroed``
skips zeroing inode tables and journal and still marks them zeroed), the
metadata step (:func:`~microagent.images.metadata.apply_ledger`) overwrites
what mke2fs copies from the host that is not part of the image (ctime,
ownership of the staging user, stray xattrs).  So the same layers and key
give a byte-identical image (``tests/unit/images/test_ext4.py`` asserts it).
Output is written to a temp file, the ledger applied to it, and only then
renamed into place.  The debugfs script is planned from the ledger and the
tree in a thread while mke2fs runs; only the inode numbers wait for the image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from typing import TYPE_CHECKING

from microagent.errors import NotFound, Permanent, ResourceExhausted
from microagent.fsutil import atomic_path

if TYPE_CHECKING:
    from microagent.images.metadata import Ledger

BLOCK = 4096
MIN_SIZE_MIB = 32
_NAMESPACE = uuid.UUID("6f1c4f2e-7d0a-4c55-9a51-6d6963726f61")


def find_mke2fs() -> str:
    """:raises NotFound: when e2fsprogs is missing."""
    found = shutil.which("mke2fs") or shutil.which("mke2fs", path="/usr/sbin:/sbin")
    if not found:
        raise NotFound("mke2fs is not installed", "apt-get install e2fsprogs")
    return found


def tree_size(root: Path) -> int:
    """Bytes the tree occupies in whole blocks, plus inode overhead."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += BLOCK * (1 + len(dirnames))
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += ((st.st_size + BLOCK - 1) // BLOCK) * BLOCK + 256
    return total


def default_size_bytes(root: Path, headroom_mib: int = 64, extra_inodes: int = 0) -> int:
    """Content plus a quarter, plus ``headroom_mib``, plus room for ``extra_inodes`` inodes."""
    size = tree_size(root) * 5 // 4 + headroom_mib * 1024 * 1024 + extra_inodes * 384
    size = max(size, MIN_SIZE_MIB * 1024 * 1024)
    return (size + 1024 * 1024 - 1) // (1024 * 1024) * 1024 * 1024


def inode_count(ledger: "Ledger") -> int:
    """Inodes to ask mke2fs for: every ledger path, half as many again, plus slack."""
    return len(ledger) * 3 // 2 + 4096


def build_ext4(tree: Path, out: Path, *, key: str, size_bytes: int | None = None,
               label: str = "microagent", ledger: "Ledger | None" = None,
               timings: dict[str, float] | None = None) -> Path:
    """Build ``out`` from ``tree``; ``key`` seeds the UUID (use the image digest).

    :param ledger: the exact metadata of every path (see :mod:`.metadata`),
        applied with debugfs before the image is renamed into place.
    :param timings: if given, receives ``mke2fs`` and ``metadata`` durations (seconds).
    :raises NotFound: without mke2fs or debugfs.
    :raises ResourceExhausted: when the content does not fit ``size_bytes`` or the disk is full.
    :raises Permanent: for any other mke2fs or debugfs failure.
    """
    mke2fs = find_mke2fs()
    size = size_bytes or default_size_bytes(tree, extra_inodes=len(ledger) if ledger else 0)
    fs_uuid = str(uuid.uuid5(_NAMESPACE, key))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                fh.truncate(size)
            env = dict(os.environ, E2FSPROGS_FAKE_TIME="1", MKE2FS_DEVICE_SECTSIZE="512")
            argv = [mke2fs, "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-L", label, "-U", fs_uuid,
                    "-E", f"hash_seed={fs_uuid},root_owner=0:0,assume_storage_prezeroed=1,nodiscard",
                    *(["-N", str(inode_count(ledger))] if ledger is not None else []),
                    "-d", str(tree), str(tmp)]
            with tempfile.TemporaryDirectory(prefix=".meta-", dir=out.parent) as work:
                meta = None
                planner = None
                if ledger is not None:
                    from microagent.images.metadata import MetadataPass

                    # plan the debugfs pass on the other core while mke2fs runs (both only read the tree)
                    meta = MetadataPass(ledger, tree, Path(work))
                    planner = threading.Thread(target=meta.plan, name="metadata-plan", daemon=True)
                    planner.start()
                t0 = time.monotonic()
                try:
                    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
                finally:
                    t1 = time.monotonic()
                    if planner is not None:
                        planner.join()
                if proc.returncode != 0:
                    msg = (proc.stderr or proc.stdout).strip()
                    if "Could not allocate block" in msg or "No space left" in msg:
                        raise ResourceExhausted(f"the tree does not fit an ext4 image of {size // 2**20} MiB: {msg}",
                                                "pass a larger --disk-size")
                    raise Permanent(f"mke2fs failed for {out.name}: {msg}")
                if meta is not None:
                    meta.apply(tmp)
                if timings is not None:
                    timings["mke2fs"] = t1 - t0
                    timings["metadata"] = time.monotonic() - t1
    except OSError as exc:
        if exc.errno == 28:
            raise ResourceExhausted(f"no space left writing {out}", "free disk space") from exc
        raise Permanent(f"cannot write {out}: {exc.strerror}") from exc
    return out


def copy_disk(src: Path, dst: Path, *, durable: bool = True) -> Path:
    """A per-workspace copy of a base disk: reflink where possible, else sparse.
    ``durable=False`` (a one-shot run's disk, deleted with the run) skips the fsyncs.

    :raises ResourceExhausted: when the disk is full.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, durable=durable) as tmp:
        proc = subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(tmp)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            if "No space" in proc.stderr:
                raise ResourceExhausted(f"no space left copying the disk to {dst}", "free disk space")
            raise Permanent(f"cannot copy {src} to {dst}: {proc.stderr.strip()}")
    return dst
