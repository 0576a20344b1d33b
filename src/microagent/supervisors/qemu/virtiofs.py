"""Host folders for QEMU guests: one virtiofsd per share, fenced in (docs/volumes.md).

The Debian cloud kernel the guests boot has no 9p (``CONFIG_NET_9P`` is off)
but has virtiofs, and QEMU 7.2 ships the C virtiofsd: so a share is a
``vhost-user-fs-device`` whose daemon this module starts before QEMU.

The daemon runs as ``python -m microagent.supervisors.qemu.virtiofs`` which,
before it becomes virtiofsd (exec):

- enters a new user namespace whose only user is root, mapped to the host
  user running microagent: the daemon holds no host privilege, and every
  file the guest creates belongs to that user;
- enters a new mount namespace and, for ``:ro``, bind-mounts the folder onto
  itself read-only there: the host kernel refuses every write, whatever the
  guest or the daemon does; a private tmpfs on ``/run`` takes virtiofsd's pid
  file (the host's ``/run`` is root's).

virtiofsd itself pivots into the folder (``sandbox=namespace``), so neither a
symlink inside it nor ``..`` leads anywhere outside (tests/volumes).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from microagent.errors import NotFound, Permanent
from microagent.host import process
from microagent.runtime_state import RuntimeDir, write_json_atomic
from microagent.vmkit.types import Share
from microagent.waiting import wait_until

RECORD = "virtiofsd.json"
CANDIDATES = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")
SOCKET_WAIT_S = 10.0


def find_virtiofsd() -> str:
    """:raises NotFound: when no virtiofsd is installed."""
    for path in (*CANDIDATES, shutil.which("virtiofsd") or ""):
        if path and os.access(path, os.X_OK):
            return path
    raise NotFound("virtiofsd is not installed, so host folders cannot be shared",
                   "apt-get install qemu-system-common (it ships /usr/lib/qemu/virtiofsd)")


def socket_names(rt: RuntimeDir) -> list[str]:
    """The sockets of this boot's daemons (relative to the runtime dir), as recorded."""
    doc = _read(rt)
    return [str(d["socket"]) for d in doc]


def _read(rt: RuntimeDir) -> list[dict[str, Any]]:
    try:
        doc = json.loads((rt.path / RECORD).read_text())
    except (OSError, ValueError):
        return []
    return [d for d in doc if isinstance(d, dict)] if isinstance(doc, list) else []


def start(rt: RuntimeDir, shares: tuple[Share, ...]) -> list[str]:
    """Start one daemon per share and wait for its socket; returns the socket names in order.

    :raises Permanent: a daemon that exits or never listens (its log tail in the message).
    """
    stop(rt)
    if not shares:
        return []
    binary = find_virtiofsd()
    started: list[dict[str, Any]] = []
    names = []
    try:
        for i, share in enumerate(shares):
            # random: virtiofsd keeps a host-wide pid file named after the socket path
            name = f"vfs-{os.urandom(6).hex()}.sock"
            log = rt.path / f"virtiofsd-{i}.log"
            argv = [sys.executable, "-m", "microagent.supervisors.qemu.virtiofs", binary, share.path, name,
                    share.mode]
            proc = process.spawn_detached(argv, cwd=rt.path, log_path=log)
            ref = process.ref_for(proc.pid)
            started.append({"socket": name, "tag": share.tag, **ref.to_json()})
            write_json_atomic(rt.path / RECORD, started)
            sock = rt.path / name
            if not wait_until(lambda: sock.exists() or proc.poll() is not None, SOCKET_WAIT_S, 0.01) \
                    or not sock.exists():
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise Permanent(f"virtiofsd for {share.path} did not start: {tail.strip()}",
                                f"see {log}")
            names.append(name)
    except BaseException:
        stop(rt)
        raise
    return names


def stop(rt: RuntimeDir) -> None:
    """Kill the recorded daemons (they also exit by themselves when QEMU goes) and forget them."""
    import signal

    for doc in _read(rt):
        pid, st = doc.get("pid"), doc.get("starttime")
        if isinstance(pid, int) and isinstance(st, int):
            ref = process.ProcessRef(pid, st)
            if process.send_signal(ref, signal.SIGKILL):
                process.wait_gone(ref, 5.0)
        name = str(doc.get("socket", ""))
        if name.startswith("vfs-") and "/" not in name:
            (rt.path / name).unlink(missing_ok=True)
    (rt.path / RECORD).unlink(missing_ok=True)


# ---------------------------------------------------------------- the daemon's own process

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21


def _fence(source: str, read_only: bool) -> None:
    """User + mount namespace, root mapped to the calling user; ``source`` read-only for ``ro``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()

    def check(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    if read_only:
        src = os.fsencode(source)
        check(libc.mount(src, src, None, MS_BIND | MS_REC, None), "bind mount")
        # a remount must keep the flags the original mount has (locked in a user namespace)
        st = os.statvfs(source)
        keep = 0
        for st_flag, ms_flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                                 (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                                 (os.ST_RELATIME, MS_RELATIME)):
            if st.f_flag & st_flag:
                keep |= ms_flag
        check(libc.mount(b"none", src, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, None), "read-only remount")
    if not (source + "/").startswith(("/run/", "/var/run/")):
        # virtiofsd keeps a pid file in /run/virtiofsd/: a private /run lets any user run it,
        # and leaves nothing behind on the host
        check(libc.mount(b"tmpfs", b"/run", b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"mode=0700"),
              "private /run")


def main(argv: list[str]) -> int:
    binary, source, socket_name, mode = argv
    try:
        _fence(source, mode == "ro")
    except OSError as exc:
        print(f"microagent virtiofs: cannot fence {source}: {exc}", file=sys.stderr)
        return 1
    os.execv(binary, [binary, f"--socket-path={socket_name}", "-o", f"source={source}",
                      "-o", "cache=auto", "-o", "sandbox=namespace", "-o", "no_posix_lock", "-o", "no_xattr",
                      "--rlimit-nofile=0"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
