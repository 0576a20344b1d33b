"""The per-workspace lock: one mutating command at a time per workspace.

``<root>/locks/<name>.lock`` is held with ``fcntl.flock`` (released by the
kernel when the holder dies, so a crashed command never wedges a
workspace). The holder writes ``{pid, command, since}`` into the file so a
waiter that gives up can name it. Waiting is bounded: after ``timeout``
seconds the waiter fails with :class:`~microagent.errors.Conflict`.

Only mutating commands (create, start, halt, stop, kill, quarantine,
delete) take the lock; exec, cp and connect run concurrently by design.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from microagent.errors import Conflict, Permanent
from microagent.vmkit.types import now_rfc3339

DEFAULT_TIMEOUT_S = 60.0
"""How long a mutating command waits for another one on the same workspace
(override: ``MICROAGENT_LOCK_TIMEOUT``)."""

_POLL_S = 0.05


def lock_path(state_root: Path, name: str) -> Path:
    return state_root / "locks" / f"{name}.lock"


def default_timeout() -> float:
    raw = os.environ.get("MICROAGENT_LOCK_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


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
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds.

        :raises Conflict: naming the holder when the wait runs out.
        :raises Permanent: when the lock file cannot be opened.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise self._busy() from None
                time.sleep(_POLL_S)
                continue
            # The file may have been unlinked by a delete that held it: retry on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._fd = fd
            record = json.dumps({"pid": os.getpid(), "command": self.command, "since": now_rfc3339()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            return

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
        try:
            if unlink:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(fd, 0)
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
