"""``serial.log``: the guest console, kept bounded.

The guest writes its console at its own pace and the VMM appends it to
``serial.log`` (QEMU ``-chardev file,append=on``; firecracker's stdout opened
for append), so nothing on the VMM side bounds it.  Here:

- at every boot the previous boot's log becomes ``serial.log.1`` (one old boot kept);
- while the VM runs, its channel helper calls :func:`enforce_cap` every
  second: past the cap the newest ``cap`` bytes go to ``serial.log.1`` and
  ``serial.log`` is truncated.  The VMM's descriptor is ``O_APPEND``, so its
  next write lands at the new end.  Together the two files hold at most about
  twice the cap, plus what the guest writes in one check interval; bytes the
  guest writes during the copy itself may be lost;
- a quarantined VM has no channel helper: a small watcher (``python -m
  microagent.serial_log``, :func:`main`) keeps the cap until the VMM exits;
- readers (``logs``) read only a bounded tail (:func:`read_tail`).

The cap is :data:`DEFAULT_CAP_BYTES` unless ``MICROAGENT_SERIAL_LOG_MAX_BYTES``
says otherwise (at least :data:`MIN_CAP_BYTES`).
"""

from __future__ import annotations

import os
import time

from microagent.fsutil import atomic_writer, open_private_append, restrict_umask

DEFAULT_CAP_BYTES = 8 * 1024 * 1024
MIN_CAP_BYTES = 64 * 1024
CAP_ENV = "MICROAGENT_SERIAL_LOG_MAX_BYTES"
CHECK_INTERVAL_S = 1.0  # the channel helper's checks (channel/router.py), and the watcher's

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib costs the channel helper (one per workspace) memory it need not pay
    from collections.abc import Mapping
    from pathlib import Path
_CHUNK = 1024 * 1024


def cap_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The configured cap (``MICROAGENT_SERIAL_LOG_MAX_BYTES``, else 8 MiB)."""
    raw = (os.environ if environ is None else environ).get(CAP_ENV, "")
    try:
        value = int(raw) if raw else DEFAULT_CAP_BYTES
    except ValueError:
        value = DEFAULT_CAP_BYTES
    return max(MIN_CAP_BYTES, value)


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def start_new_boot(path: Path, banner: str) -> None:
    """Keep the last boot's log as ``serial.log.1`` and start an empty, private ``serial.log``."""
    try:
        if path.stat().st_size > 0:
            os.replace(path, previous(path))
    except FileNotFoundError:
        pass
    fd = open_private_append(path)
    try:
        os.write(fd, banner.encode())
    finally:
        os.close(fd)


def enforce_cap(path: str | Path, cap: int) -> bool:
    """Past ``cap`` bytes: the newest ``cap`` bytes become ``serial.log.1`` and the log
    starts again (with a line saying so).  Returns whether it rotated."""
    try:
        src = open(path, "rb")
    except FileNotFoundError:
        return False
    with src:
        size = os.fstat(src.fileno()).st_size
        if size <= cap:
            return False
        old = os.fspath(path) + ".1"  # previous(), for a path given as text
        with atomic_writer(old) as dst:
            src.seek(max(0, size - cap))
            left = min(size, cap)  # not what the guest appends meanwhile: that stays for the truncate to drop
            while left and (chunk := src.read(min(left, _CHUNK))):
                dst.write(chunk)
                left -= len(chunk)
        os.truncate(path, 0)
    fd = open_private_append(path)
    try:
        os.write(fd, f"[microagent] serial.log passed {cap} bytes; older output is in "
                     f"{os.path.basename(old)}\n".encode())
    finally:
        os.close(fd)
    return True


def read_tail(path: Path, max_bytes: int) -> tuple[bytes, int]:
    """The last ``max_bytes`` of ``path`` (from a line start when cut) and the file's size."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read(max_bytes)
    except FileNotFoundError:
        return b"", 0
    if start > 0:
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else data
    return data, size


def watcher_argv(python: str, path: Path, cap: int, vmm_pid: int) -> list[str]:
    """The command line of the watcher that keeps ``path`` capped while ``vmm_pid`` lives."""
    return [python, "-m", "microagent.serial_log", str(path), str(cap), str(vmm_pid)]


def main(argv: list[str] | None = None) -> int:
    """``python -m microagent.serial_log PATH CAP VMM_PID``: cap PATH until the VMM exits."""
    import sys

    path, cap, pid = (sys.argv[1:] if argv is None else argv)[:3]
    restrict_umask()
    while _running(int(pid)):
        try:
            enforce_cap(path, int(cap))
        except OSError:
            pass
        time.sleep(CHECK_INTERVAL_S)
    return 0


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            return False
        return stat[stat.rfind(")") + 2:][:1] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, only not ours to signal
    return True


if __name__ == "__main__":
    raise SystemExit(main())
