"""A child process that creates the staged files of a large layer, on the second core.

Creating thousands of files is mostly kernel time (inode allocation, page
cache copies) that Python's GIL would otherwise serialise with tar parsing.
:class:`~microagent.images.layers.Extractor` keeps every decision (names,
containment, limits, the ledger) and hands this process only *new* regular
files in directories it has already made, through a pipe:

``header (op, len(dir), len(name), mode, size) | dir | name | size bytes of content``

The child opens each directory one component at a time from the staging
root's fd with ``O_NOFOLLOW`` (as the extractor does), creates the file with
``O_EXCL`` and the given permission bits (its umask is 0; the extractor
never passes setuid/setgid/sticky) and splices the content in.  ``sync``
answers once everything before it has been written and forgets the cached
directory fds (the extractor settles the writer before it removes
anything).  The first error is reported (errno and the file's path) and the
child exits; the extractor turns it into the same refusal an in-process
write would raise.

This file is also the child's program: it runs as ``python -I -S stagewriter.py ROOT_FD``
and imports only the standard library.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Callable

HEADER = struct.Struct("<BHHHQ")
ERROR = struct.Struct("<IH")
OP_FILE, OP_SYNC = 1, 2
ACK = b"K"
FAIL = b"E"
_PIPE_BYTES = 1 << 20
_FD_CACHE = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class WriteFailed(Exception):
    """The child could not create a file; ``label`` is its path in the staging tree."""

    def __init__(self, label: str, err: OSError) -> None:
        super().__init__(f"{label}: {err.strerror}")
        self.label, self.error = label, err


def available() -> bool:
    """Whether a child can run this file (not when frozen or imported from a zip)."""
    return bool(sys.executable) and os.path.isfile(__file__)


class StageWriter:
    """The parent's end: queue files, :meth:`sync`, :meth:`close`.

    :param root_fd: the staging root (the child gets its own copy).
    :raises OSError: the child cannot be started.
    """

    def __init__(self, root_fd: int) -> None:
        import subprocess

        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(root_fd)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(root_fd,), close_fds=True)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self.fd = self._proc.stdin.fileno()
        self._answers = self._proc.stdout.fileno()
        _grow_pipe(self.fd)
        self._pending = 0  # files queued since the last sync
        self._last = ""

    def file(self, directory: str, name: str, mode: int, size: int, fill: "Callable[[int], None]") -> None:
        """Queue a new file ``directory/name`` of ``size`` bytes; ``fill(fd)`` writes exactly that many to ``fd``.

        :raises WriteFailed: an earlier op (or this one) failed in the child.
        """
        d, n = os.fsencode(directory), os.fsencode(name)
        self._pending += 1
        self._last = f"{directory}/{name}" if directory else name
        try:
            _write_all(self.fd, HEADER.pack(OP_FILE, len(d), len(n), mode & 0o777, size) + d + n)
            fill(self.fd)
        except BrokenPipeError:
            raise self._failure() from None

    def sync(self) -> None:
        """Wait until every queued file exists.

        :raises WriteFailed: a queued op failed.
        """
        if not self._pending:
            return
        try:
            _write_all(self.fd, HEADER.pack(OP_SYNC, 0, 0, 0, 0))
        except BrokenPipeError:
            raise self._failure() from None
        answer = _read_exact(self._answers, 1)
        if answer != ACK:
            raise self._failure(answer)
        self._pending = 0

    def close(self) -> None:
        """End the child (queued files may be lost: call :meth:`sync` first to keep them)."""
        import subprocess

        proc = self._proc
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _failure(self, first: bytes | None = None) -> WriteFailed:
        first = _read_exact(self._answers, 1) if first is None else first
        if first == FAIL:
            head = _read_exact(self._answers, ERROR.size)
            if len(head) == ERROR.size:
                code, length = ERROR.unpack(head)
                path = os.fsdecode(_read_exact(self._answers, length))
                return WriteFailed(path, OSError(code, os.strerror(code)))
        status = self._proc.wait()
        return WriteFailed(self._last, OSError(errno.EIO, f"the staging writer exited with status {status}"))


def _grow_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (OSError, AttributeError):
        pass  # a smaller pipe only costs more wake-ups


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


# -- the child ---------------------------------------------------------------------


class _Child:
    def __init__(self, root_fd: int, src: int, answers: int) -> None:
        self.root_fd, self.src, self.answers = root_fd, src, answers
        self.fds: dict[bytes, int] = {}
        self.splice = hasattr(os, "splice")

    def drop(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def directory(self, path: bytes) -> int:
        fd = self.fds.get(path)
        if fd is not None:
            return fd
        if len(self.fds) >= _FD_CACHE:
            self.drop()
        fd = os.dup(self.root_fd)
        try:
            for comp in path.split(b"/") if path else ():
                if comp in (b"", b".", b".."):
                    raise OSError(errno.EINVAL, "invalid path component")
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self.fds[path] = fd
        return fd

    def copy(self, fd: int, size: int) -> None:
        while size:
            n = 0
            if self.splice:
                try:
                    n = os.splice(self.src, fd, size)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                        raise
                    self.splice = False
                    continue
            else:
                data = os.read(self.src, min(size, _PIPE_BYTES))
                n = len(data)
                _write_all(fd, data)
            if not n:
                raise EOFError
            size -= n

    def run(self) -> int:
        while True:
            head = _read_exact(self.src, HEADER.size)
            if len(head) < HEADER.size:
                return 0  # the extractor closed the pipe (done, or aborting)
            op, dlen, nlen, mode, size = HEADER.unpack(head)
            if op == OP_SYNC:
                self.drop()
                _write_all(self.answers, ACK)
                continue
            names = _read_exact(self.src, dlen + nlen)
            if op != OP_FILE or len(names) < dlen + nlen:
                return 1
            directory, name = names[:dlen], names[dlen:]
            try:
                if not name or b"/" in name or name in (b".", b".."):
                    raise OSError(errno.EINVAL, "invalid file name")
                fd = os.open(name, _FILE_FLAGS, mode & 0o777, dir_fd=self.directory(directory))
                try:
                    self.copy(fd, size)
                finally:
                    os.close(fd)
            except EOFError:
                return 1  # the extractor died or gave up mid-file
            except OSError as exc:
                path = directory + b"/" + name if directory else name
                _write_all(self.answers, FAIL + ERROR.pack(exc.errno or errno.EIO, len(path)) + path)
                return 1


def _main() -> int:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the extractor's to handle: it closes the pipe
    os.umask(0)  # modes are exactly what the extractor asks for
    try:
        return _Child(int(sys.argv[1]), sys.stdin.fileno(), sys.stdout.fileno()).run()
    except BrokenPipeError:
        return 1  # the extractor is gone


if __name__ == "__main__":
    raise SystemExit(_main())
