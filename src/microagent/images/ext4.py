"""ext4 disk images from a directory tree, with ``mke2fs -d``.

Deterministic by construction: the UUID and directory hash seed derive from a
caller-given key, and ``E2FSPROGS_FAKE_TIME`` pins every timestamp mke2fs
writes, so the same tree and key give a byte-identical image.  Output is
written to a temp file and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

from microagent.errors import NotFound, Permanent, ResourceExhausted

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


def default_size_bytes(root: Path, headroom_mib: int = 64) -> int:
    size = tree_size(root) * 5 // 4 + headroom_mib * 1024 * 1024
    size = max(size, MIN_SIZE_MIB * 1024 * 1024)
    return (size + 1024 * 1024 - 1) // (1024 * 1024) * 1024 * 1024


def build_ext4(tree: Path, out: Path, *, key: str, size_bytes: int | None = None,
               label: str = "microagent") -> Path:
    """Build ``out`` from ``tree``; ``key`` seeds the UUID (use the image digest).

    :raises NotFound: without mke2fs.
    :raises ResourceExhausted: when the content does not fit ``size_bytes`` or the disk is full.
    :raises Permanent: for any other mke2fs failure.
    """
    mke2fs = find_mke2fs()
    size = size_bytes or default_size_bytes(tree)
    fs_uuid = str(uuid.uuid5(_NAMESPACE, key))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.truncate(size)
        env = dict(os.environ, E2FSPROGS_FAKE_TIME="1", MKE2FS_DEVICE_SECTSIZE="512")
        argv = [mke2fs, "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-L", label, "-U", fs_uuid,
                "-E", f"hash_seed={fs_uuid},root_owner=0:0,lazy_itable_init=0,nodiscard",
                "-d", str(tree), str(tmp)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip()
            if "Could not allocate block" in msg or "No space left" in msg:
                raise ResourceExhausted(f"the tree does not fit an ext4 image of {size // 2**20} MiB: {msg}",
                                        "pass a larger --disk-size")
            raise Permanent(f"mke2fs failed for {out.name}: {msg}")
        os.replace(tmp, out)
    except OSError as exc:
        if exc.errno == 28:
            raise ResourceExhausted(f"no space left writing {out}", "free disk space") from exc
        raise Permanent(f"cannot write {out}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return out


def copy_disk(src: Path, dst: Path) -> Path:
    """A per-workspace copy of a base disk: reflink where possible, else sparse.

    :raises ResourceExhausted: when the disk is full.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    proc = subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(tmp)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        if "No space" in proc.stderr:
            raise ResourceExhausted(f"no space left copying the disk to {dst}", "free disk space")
        raise Permanent(f"cannot copy {src} to {dst}: {proc.stderr.strip()}")
    os.replace(tmp, dst)
    return dst
