"""QEMU snapshots: a migration stream to a file, with guest RAM in its own file.

Guest RAM lives in a ``memory-backend-file`` (:func:`.argv.memory_backend`), so
with the ``x-ignore-shared`` capability the migration stream carries only the
device state (tens of KB, saved in milliseconds); the RAM is the file itself.
QEMU 7.2 has no ``file:`` migration URI, hence ``exec:cat``.  A state file and
its memory file are a matched pair, never written after the save: every
restore, in place or a fork, maps the memory file ``share=off`` (private
copy-on-write), so all restores of one snapshot share the pages their guests
have not written.  Such a VM has no RAM file of its own: a snapshot of it
carries its RAM in the state file (:func:`save`), and a restore of that one
loads it into a new RAM file.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from typing import Callable

from microagent.errors import Permanent, Transient
from microagent.supervisors.qemu.qmp import QMPClient

STATE_FILE = "state"
MEMORY_FILE = "memory"
DISK_FILE = "disk"
MIGRATE_TIMEOUT_S = 60.0
#: why a snapshot of another QEMU is refused (:meth:`~microagent.supervisors.vmm.VMMBackend.refuse_incompatible`)
WHY_VERSION = "QEMU does not promise to load another version's microvm state"

_IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]


def qemu_version(binary: str, cache_dir: Path | None = None) -> str:
    """``QEMU emulator version 7.2.x (…)``'s first line, as recorded and compared.

    Asking costs a QEMU start-up (~25 ms) on every restore, so the answer is kept in
    ``cache_dir/qemu-version.json`` under the binary's identity (path, inode, size,
    mtime, ctime): replacing or rewriting the binary changes it, and ctime cannot be set back.
    """
    import json
    import os

    from microagent.fsutil import atomic_write, private_dir

    st = os.stat(binary)
    identity = [os.path.realpath(binary), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    cache = cache_dir / "qemu-version.json" if cache_dir is not None else None
    if cache is not None:
        try:
            known = json.loads(cache.read_text(encoding="utf-8"))
            if isinstance(known, dict) and known.get("identity") == identity and isinstance(known.get("version"), str):
                return known["version"]
        except (OSError, ValueError):
            pass
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Permanent(f"cannot ask {binary} for its version: {exc}") from exc
    version = out.splitlines()[0].strip() if out.strip() else "unknown"
    if cache is not None and version != "unknown":
        try:
            private_dir(cache.parent)
            atomic_write(cache, json.dumps({"identity": identity, "version": version}).encode())
        except OSError:
            pass  # only a cache
    return version


def _wait_migration(qmp: QMPClient, what: str) -> None:
    deadline = time.monotonic() + MIGRATE_TIMEOUT_S
    while time.monotonic() < deadline:
        info = qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise Permanent(f"{what} failed: {info.get('error-desc', status)}",
                            "see vmm.log in the runtime directory")
        time.sleep(0.005)
    raise Transient(f"{what} did not finish within {MIGRATE_TIMEOUT_S:.0f}s")


def save(qmp_socket: Path, dest: Path, ram: Path | None, disk: Path, *, resume: bool) -> None:
    """Pause, write the device state, copy the RAM and disk files into ``dest``; resume
    when ``resume`` (also after a failure: the VM stays as it was).

    ``ram`` is ``None`` for a VM whose RAM maps a snapshot's memory copy-on-write
    (a restore): that RAM is no shared block, so the migration stream carries it
    (the pages the guest uses, in ``state``) and the snapshot has no memory file.
    """
    from microagent.images.ext4 import copy_disk

    with QMPClient(qmp_socket, timeout=30.0) as qmp:
        qmp.execute("stop")
        try:
            qmp.execute("migrate-set-capabilities", capabilities=_IGNORE_SHARED)
            qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(str(dest / STATE_FILE))}")
            _wait_migration(qmp, "saving the device state")
            # the vcpus are stopped and the disks flushed: both files are at rest
            if ram is not None:
                copy_disk(ram, dest / MEMORY_FILE)
            copy_disk(disk, dest / DISK_FILE)
        finally:
            if resume:
                qmp.execute("cont")


def _connect(qmp_socket: Path, vmm_alive: Callable[[], bool], timeout: float = 10.0) -> QMPClient:
    """QMP of a QEMU just spawned: its socket may not exist, or not listen, yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return QMPClient(qmp_socket, timeout=30.0)
        except Transient:
            if not vmm_alive() or time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def load(qmp_socket: Path, state: Path, vmm_alive: Callable[[], bool]) -> None:
    """Feed a QEMU started with ``-incoming defer`` the saved state; it runs when done."""
    with _connect(qmp_socket, vmm_alive) as qmp:
        qmp.execute("migrate-set-capabilities", capabilities=_IGNORE_SHARED)
        qmp.execute("migrate-incoming", uri=f"exec:cat {shlex.quote(str(state))}")
        _wait_migration(qmp, "loading the snapshot")
        if not qmp.execute("query-status").get("running"):
            qmp.execute("cont")
