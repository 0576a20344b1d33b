"""The per-workspace lock: one mutating command at a time per workspace.

``<root>/locks/<name>.lock`` is held with ``fcntl.flock`` (released by the
kernel when the last holder of the open file goes away, so a crashed command
never wedges a workspace). The holder writes ``{pid, command, since}`` into
the file so a waiter that gives up can name it. Waiting is bounded: after
``timeout`` seconds the waiter fails with :class:`~microagent.errors.Conflict`.

Taking the lock needs no free space: the record is written in place over a
fixed-size slot that release blanks rather than truncates (so its block stays
allocated), and a record that cannot be written is skipped.  A full host disk
must not stop ``kill`` or ``delete -f``.

The lock is held by whoever does the work: :func:`held_fd` gives the open
lock of this process to the supervisor it runs (the child inherits the open
file description, and the flock with it), so a CLI killed mid-command leaves
the workspace locked until its supervisor has finished.

Only mutating commands (create, start, halt, stop, kill, quarantine,
delete) take the lock; exec, cp and connect run concurrently by design.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from microagent.errors import Conflict, Permanent
from microagent.vmkit.basics import now_rfc3339
from microagent.waiting import wait_until

DEFAULT_TIMEOUT_S = 60.0
"""How long a mutating command waits for another one on the same workspace
(override: ``MICROAGENT_LOCK_TIMEOUT``)."""

_POLL_S = 0.05
RECORD_BYTES = 512
"""The holder record's slot at the start of the lock file (blank-padded JSON)."""
FD_ENV = "MICROAGENT_LOCK_FD"
"""Names the inherited lock descriptor in a supervisor run under the lock."""

_held: dict[str, int] = {}  # lock path -> fd, for the locks this process holds


def lock_path(state_root: Path, name: str) -> Path:
    return state_root / "locks" / f"{name}.lock"


def default_timeout() -> float:
    raw = os.environ.get("MICROAGENT_LOCK_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


def held_fd(state_root: Path, name: str) -> int | None:
    """The descriptor of workspace ``name``'s lock when this process holds it."""
    return _held.get(str(lock_path(state_root, name)))


def write_record(fd: int, command: str) -> None:
    """Name the holder in its slot, in place; skipped when it cannot be written
    (a full disk must not keep anyone from taking the lock)."""
    record = json.dumps({"pid": os.getpid(), "command": command, "since": now_rfc3339()}).encode()
    try:
        os.pwrite(fd, record.ljust(RECORD_BYTES)[:RECORD_BYTES], 0)
    except OSError:
        pass


class WorkspaceLock:
    """Exclusive lock on one workspace, as a context manager.

    :param state_root: the state root.
    :param name: the workspace name (a safe basename).
    :param command: what the holder is doing (shown to waiters).
    :param timeout: seconds to wait; ``None`` = :func:`default_timeout`.
    """

    def __init__(self, state_root: Path, name: str, command: str, timeout: float | None = None) -> None:
        self.path = lock_path(state_root, name)
        self.name = name
        self.command = command
        self.timeout = default_timeout() if timeout is None else timeout
        self._fd: int | None = None
        self.unlink_on_release = False
        """Set by a delete: remove the lock file when releasing it."""

    def _open(self) -> int:
        try:
            from microagent.fsutil import PRIVATE_FILE_MODE, private_dir

            private_dir(self.path.parent)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except OSError as exc:
            raise Permanent(f"cannot open lock file {self.path}: {exc.strerror}",
                            "check permissions of the state directory") from exc

    def holder(self) -> dict[str, Any]:
        """What the current holder wrote (``{}`` when unknown)."""
        try:
            data = json.loads(self.path.read_text().strip() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds.

        :raises Conflict: naming the holder when the wait runs out.
        :raises Permanent: when the lock file cannot be opened.
        """
        if not wait_until(self._try_lock, self.timeout, _POLL_S):
            raise self._busy()
        _held[str(self.path)] = self._fd
        write_record(self._fd, self.command)

    def _try_lock(self) -> bool:
        """One attempt that does not wait: whether the lock is now ours (in ``self._fd``)."""
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            # The file may have been unlinked by a delete that held it: retry on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)

    def _busy(self) -> Conflict:
        h = self.holder()
        who = f"'{h.get('command', '?')}' (pid {h.get('pid', '?')}, since {h.get('since', '?')})" if h else "another command"
        return Conflict(
            f"workspace {self.name} is busy: {who} holds its lock; gave up after {self.timeout:g}s",
            "wait for that command to finish and retry",
            holder=h,
        )

    def release(self, *, unlink: bool = False) -> None:
        """Release the lock; ``unlink`` removes the file (after a delete)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _held.pop(str(self.path), None)
        try:
            if unlink:
                self.path.unlink(missing_ok=True)
            else:
                os.pwrite(fd, b" " * RECORD_BYTES, 0)  # blank, not truncated: the block stays ours
        except OSError:
            pass
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> "WorkspaceLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release(unlink=self.unlink_on_release)
