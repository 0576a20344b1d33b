"""Boot snapshots: the warm path of ``run`` and of a fresh workspace's first ``start``.

The first cold boot of a combination of image, kernel, guest init, memory,
CPUs, disk size and boot-time env saves the VM once the guest is ready
(before any command ran) into ``<state>/images/warm/<base disk>/<key>/``:
the same files a named snapshot holds (:mod:`.snapshots`) and a
``snapshot.json`` that also records the inputs the key was made from.
Later boots of the same combination restore it instead of booting; the
command, env, user and workdir travel with each exec, and the supervisor
gives the guest a fresh clock, entropy and hostname after the restore.

The key hashes the image digest, the base disk, and the identity (size,
mtime, ctime, inode) of the kernel and initramfs files, so replacing any
of them misses and boots cold (which saves a new entry); the VMM's version
(QEMU's, Firecracker's) and device layout are recorded and checked by the
supervisor at restore, and a refused or broken entry is removed and the
boot done cold.  Firecracker maps an entry's memory file ``MAP_PRIVATE``
at every restore, in place or not, so one file serves any number of them.

Entries live with the base disk they were made from: ``image rm`` and
``image prune`` remove the entries of every base disk they delete
(:mod:`microagent.images.store`).  Two boots racing to save the same entry do not corrupt
it: the saver holds a lock on the key, stages in a dot directory and
publishes with one rename; a loser simply does not save.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microagent.fsutil import atomic_write, fsync_dir, private_dir
from microagent.vmkit.types import SnapshotSpec, now_rfc3339
from microagent.workspace import snapshots

SCHEMA_VERSION = 1
#: backends whose supervisors save and restore snapshots (docs/snapshots.md)
WARM_BACKENDS = ("qemu", "firecracker")


def warm_root(state_root: Path) -> Path:
    from microagent.images.store import warm_dir

    return warm_dir(state_root)


def _file_identity(path: Path) -> dict[str, Any]:
    """Cheaper than a sha256 of a 14 MB kernel at every run, and as sure to change
    when the file is replaced or rewritten (ctime cannot be set back)."""
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtimeNs": st.st_mtime_ns, "ctimeNs": st.st_ctime_ns,
            "ino": st.st_ino}


@dataclass(frozen=True)
class WarmKey:
    """Where the boot snapshot of one combination of boot inputs lives."""

    state_root: Path
    group: str  # the base disk's file stem: entries go with their base disk
    key: str
    inputs: dict[str, Any]

    @property
    def path(self) -> Path:
        return warm_root(self.state_root) / self.group / self.key

    @property
    def label(self) -> str:
        return f"warm snapshot {self.group}/{self.key}"


def key_for(state_root: Path, *, backend: str, arch: str, image_ref: str, image_digest: str, base_disk: Path,
            kernel: Path, initrd: Path, memory_mib: int, cpus: int, disk_bytes: int,
            env: tuple[str, ...] = ()) -> WarmKey:
    """The key of a boot with these inputs (stats the base disk, kernel and initramfs)."""
    inputs = {"backend": backend, "arch": arch, "image": {"ref": image_ref, "digest": image_digest},
              "baseDisk": _file_identity(base_disk), "kernel": _file_identity(kernel),
              "initramfs": _file_identity(initrd), "memoryMiB": memory_mib, "cpuCount": cpus,
              "diskBytes": disk_bytes, "env": list(env)}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]
    return WarmKey(state_root, base_disk.name.removesuffix(".ext4"), digest, inputs)


def lookup(key: WarmKey) -> snapshots.Snapshot | None:
    """The published entry of ``key`` if it is whole; a damaged one is removed."""
    try:
        doc = json.loads((key.path / snapshots.MANIFEST_NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        discard(key)
        return None
    snap = snapshots.Snapshot(key.path, doc if isinstance(doc, dict) else {})
    if snap.doc.get("schemaVersion") != SCHEMA_VERSION or snap.doc.get("inputs") != key.inputs:
        discard(key)
        return None
    try:
        snap.verify_files(key.label, "it is removed and made again")
    except Exception:  # noqa: BLE001 - any damage: drop it, boot cold, save anew
        discard(key)
        return None
    return snap


def restore_spec(snap: snapshots.Snapshot) -> SnapshotSpec:
    """A fork of the entry: its memory mapped copy-on-write, so it stays reusable."""
    return snap.spec(private=True, generation=1)


@contextlib.contextmanager
def saving(key: WarmKey) -> Iterator[Path | None]:
    """A private staging directory for ``key``'s entry, or ``None`` when another boot is
    saving it right now or it exists already.  The stage is removed unless published."""
    group = private_dir(key.path.parent)
    lock_fd = os.open(group / f".{key.key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        if key.path.exists():
            yield None
            return
        for old in group.glob(f"{snapshots.STAGE_PREFIX}{key.key}-*"):
            shutil.rmtree(old, ignore_errors=True)  # a saver that crashed: we hold the lock
        stage = group / f"{snapshots.STAGE_PREFIX}{key.key}-{os.urandom(4).hex()}"
        stage.mkdir(mode=0o700)
        try:
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)  # gone already when published
    finally:
        os.close(lock_fd)


def publish(stage: Path, key: WarmKey, vmm: dict[str, Any]) -> snapshots.Snapshot:
    """Write the entry's manifest into ``stage`` and rename it into place."""
    for name in os.listdir(stage):
        os.chmod(stage / name, 0o600)
    inputs = key.inputs
    doc = {"schemaVersion": SCHEMA_VERSION, "workspace": "(warm)", "tag": key.key, "createdAt": now_rfc3339(),
           "backend": inputs["backend"], "vmm": vmm.get("vmm"), "vmmVersion": vmm.get("vmmVersion"),
           "layout": vmm.get("layout"), "memoryMiB": inputs["memoryMiB"], "cpuCount": inputs["cpuCount"],
           "network": "isolated", "image": inputs["image"], "inputs": inputs,
           "files": snapshots.file_records(stage)}
    atomic_write(stage / snapshots.MANIFEST_NAME, json.dumps(doc, indent=2).encode() + b"\n")
    os.rename(stage, key.path)
    fsync_dir(key.path.parent)
    return snapshots.Snapshot(key.path, doc)


def discard(key: WarmKey) -> None:
    """Remove ``key``'s entry (renamed aside first: a reader never sees half of it)."""
    if not key.path.exists():
        return
    aside = key.path.with_name(f"{snapshots.STAGE_PREFIX}rm-{key.key}-{os.urandom(4).hex()}")
    try:
        os.rename(key.path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def start_fresh(client: Any, state_root: Path, manifest: Any, config: Any, initrd: Path, runtime_dir: Path,
                timeout: float) -> Any:
    """The first ``start`` of a workspace that never booted: restore its boot snapshot
    in place (disk copied over its fresh one, memory mapped copy-on-write from the
    entry) or, when there is none, boot and save one.  Anything else
    (networked, egress-filtered, another backend, booted before) boots as usual.

    :returns: the supervisor's answer to ``start``; ``runtime["warm"]`` says which it was.
    """
    eligible = (manifest.backend in WARM_BACKENDS and manifest.network == "isolated" and not manifest.publish
                and getattr(manifest, "egress", None) is None and not getattr(manifest, "service", "")
                and not getattr(manifest, "volumes", ())
                and not (runtime_dir / "serial.log").exists()  # a service runs from boot: its own
                and not getattr(manifest, "extra", {}).get("clonedFrom"))  # a clone's disk is its own
    if not eligible:
        return client.send("start", manifest.name, config, timeout=timeout)
    kernel = Path(manifest.verification.kernel.path)
    key = key_for(state_root, backend=manifest.backend, arch=kernel.parent.name, image_ref=manifest.image.ref,
                  image_digest=manifest.image.digest, base_disk=Path(manifest.verification.rootfsBase.path),
                  kernel=kernel, initrd=initrd, memory_mib=manifest.memoryMiB, cpus=manifest.cpuCount,
                  disk_bytes=Path(config.rootfsPath).stat().st_size, env=tuple(config.env))
    snap = lookup(key)
    if snap is not None:
        try:
            resp = client.send("start", manifest.name, config, timeout=timeout,
                               snapshot=snap.spec(private=False, generation=1))
            resp.runtime = {**(resp.runtime or {}), "warm": True}
            return resp
        except Exception:  # noqa: BLE001 - refused (a VMM update) or broken: drop it, boot cold
            discard(key)
    resp = client.send("start", manifest.name, config, timeout=timeout)
    save_booted(client, manifest.name, key)
    resp.runtime = {**(resp.runtime or {}), "warm": False}
    return resp


def save_booted(client: Any, name: str, key: WarmKey) -> None:
    """Save the just-booted guest ``name`` as ``key``'s entry, unless another boot is at it.
    Best effort: a failure costs the next boot its warm start, not this one its guest."""
    from microagent.errors import MicroagentError

    with saving(key) as stage:
        if stage is None:
            return
        _warm_up(client.state_root, name)
        try:
            resp = client.send("snapshot", name, timeout=600, snapshot=SnapshotSpec(path=str(stage)))
            publish(stage, key, dict(resp.runtime or {}))
        except (MicroagentError, OSError):
            pass


#: run once before a boot snapshot is saved: the first command after a restore then finds
#: the shell's binary in the guest's page cache (measured: its first exec ~60 ms sooner under TCG)
WARM_UP_ARGV = ("true",)


def _warm_up(state_root: Path, name: str) -> None:
    """Run :data:`WARM_UP_ARGV` in the guest; best effort (an image without it saves as is).
    It counts in the workspace's ``execCount`` like any exec."""
    from microagent.channel import ExecRequest, open_channel
    from microagent.channel import exec as guest_exec
    from microagent.errors import MicroagentError
    from microagent.workspace.channel_path import guest_channel_path

    try:
        with open_channel(guest_channel_path(state_root, name), hello_timeout=10.0) as conn:
            guest_exec.start(conn, ExecRequest(argv=list(WARM_UP_ARGV), timeout_s=10.0)).wait()
    except (MicroagentError, OSError):
        pass
