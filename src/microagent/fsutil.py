"""Private files and directories, whatever the umask.

Everything microagent keeps is its user's alone: directories 0700, files
0600 (the per-boot config carries ``-e`` values; a VMM's control socket in a
reachable directory is code execution as that user).  Modes are set
explicitly rather than trusted to the caller's umask.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and pathlib cost the CLI's start-up (every command sets the umask here)
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path
    from typing import BinaryIO, TypeVar

    _T = TypeVar("_T")


def _contextmanager(func: Callable[..., Iterator[_T]]) -> Callable[..., AbstractContextManager[_T]]:
    """:func:`contextlib.contextmanager`, with contextlib imported on first use: every
    CLI command imports this module (the umask), few write a file."""

    def call(*args: object, **kwargs: object) -> AbstractContextManager[_T]:
        from contextlib import contextmanager

        return contextmanager(func)(*args, **kwargs)

    # functools.wraps by hand: functools costs the channel helper memory
    call.__name__, call.__qualname__, call.__doc__ = func.__name__, func.__qualname__, func.__doc__
    call.__wrapped__ = func  # type: ignore[attr-defined]
    return call


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

_user_umask: int | None = None  # the umask the process started with, before restrict_umask()


def restrict_umask() -> None:
    """Set the process umask to 077 (an entry point's first step), remembering the user's.

    Sockets and logs a VMM creates follow the umask, so every process that
    spawns one (CLI, supervisors, helpers) restricts it.  Files made *for*
    the user outside the state root (``cp`` from a guest) still follow the
    user's own umask: :func:`user_umask`.
    """
    global _user_umask
    previous = os.umask(0o077)
    if _user_umask is None:
        _user_umask = previous


def user_umask() -> int:
    """The user's umask: as it was before :func:`restrict_umask`, else the current one."""
    if _user_umask is not None:
        return _user_umask
    # /proc avoids os.umask's set-and-restore, which races with other threads creating files.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` where every directory created is 0700, and ``path`` itself is 0700.

    Existing parents are left as they are; only ``path`` is tightened when it exists.
    """
    from pathlib import Path

    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            pass  # created meanwhile by another process: tightened below if it is ours
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    for directory in (*missing, path):
        if os.stat(directory).st_mode & 0o7777 != PRIVATE_DIR_MODE:
            os.chmod(directory, PRIVATE_DIR_MODE)
    return path


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data``: a temp file in the same directory, written,
    fsynced and renamed over it, then the directory fsynced.  Readers see the old
    content or the new, never a mix; the file has ``mode`` from its first byte.

    Plain ``os`` calls, no context managers or pathlib: the channel helper (one
    per workspace) writes its exec count with it and would pay their imports."""
    path = os.fspath(path)
    tmp = _temp_name(path)
    fd = _create(tmp, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    _publish(tmp, fd, path)


def _publish(tmp: str, fd: int, path: str, durable: bool = True) -> None:
    """Fsync ``tmp`` through ``fd`` (closed here) and rename it over ``path``, then
    fsync the directory (neither when not ``durable``); ``tmp`` is removed if any of it fails."""
    try:
        try:
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(path) or ".")


def _temp_name(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name[:200]}.{os.getpid()}.{os.urandom(4).hex()}.tmp")  # within NAME_MAX


def _create(tmp: str, mode: int) -> int:
    """A new file with exactly ``mode`` (O_CREAT's is filtered by the umask)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    return fd


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


@_contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = PRIVATE_FILE_MODE) -> Iterator[BinaryIO]:
    """:func:`atomic_write` for content written in pieces: a binary file object
    on the temp file, which replaces ``path`` when the block ends without an
    exception (and is removed when it does not)."""
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as fh:
        yield fh


@_contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int = PRIVATE_FILE_MODE, *,
                durable: bool = True) -> Iterator[Path]:
    """:func:`atomic_write` for a writer that needs a file name (another program):
    the empty temp file's path, created with ``mode``.  When the block ends
    without an exception the file is fsynced and renamed over ``path``, then the
    directory fsynced; otherwise it is removed.  The writer may change its mode.
    ``durable=False`` skips the fsyncs, for a file that does not outlive this run."""
    from pathlib import Path

    path = os.fspath(path)
    tmp = _temp_name(path)
    os.close(_create(tmp, mode))
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        _discard(tmp)
        raise
    _publish(tmp, fd, path, durable)


def overwrite_in_place(path: str | os.PathLike[str], data: bytes) -> bool:
    """Write ``data`` over ``path`` within the blocks it already has, for when the disk is
    full and :func:`atomic_write` finds no room for its temp file.  Not atomic; ``False``
    (nothing written) when ``data`` would need more space or the file cannot be opened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if len(data) > os.fstat(fd).st_blocks * 512:
            return False
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_private_append(path: str | os.PathLike[str]) -> int:
    """An ``O_APPEND`` descriptor on ``path``, created 0600 (an older file is tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
