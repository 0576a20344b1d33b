"""The ``put`` and ``get`` session kinds (docs/protocol.md, "put", "get").

This module owns copying whole files into and out of the guest. Content is
streamed in DATA chunks that respect flow-control credit, so a multi-GB file
never sits in memory. Local files are written beside their destination and
renamed into place, like the guest does, with the guest's permission bits
less setuid, setgid, sticky and the umask. Every wait has an idle timeout,
so a guest that goes silent fails the copy instead of hanging it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from microagent.channel.errors import ChannelTimeout, ProtocolError, SessionEnded
from microagent.channel.frames import MAX_DATA_CHUNK, STDIN, STDOUT
from microagent.channel.limits import DEFAULT_GET_MAX, IDLE_TIMEOUT_S
from microagent.channel.mux import ChannelConnection, ControlEvent, DataEvent, ErrorEvent, ExitEvent, Session
from microagent.errors import InvalidRequest, Permanent, ResourceExhausted
from microagent.fsutil import atomic_writer, user_umask

__all__ = ["FileStat", "get", "get_bytes", "get_to", "put"]

_READ_CHUNK = 4 * MAX_DATA_CHUNK


@dataclass(frozen=True)
class FileStat:
    """What ``get`` reported about a guest file.

    :param size: size in bytes from the guest's ``stat``.
    :param mode: ``st_mode`` as sent by the guest (may include the file-type bits).
    :param bytes: bytes actually transferred.
    """

    size: int
    mode: int
    uid: int
    gid: int
    bytes: int

    @property
    def permissions(self) -> int:
        """The permission bits (``mode & 0o7777``)."""
        return self.mode & 0o7777


def _check_guest_path(path: str) -> None:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidRequest(f"guest path {path!r} is not absolute", "give an absolute path inside the guest")


def put(
    conn: ChannelConnection,
    guest_path: str,
    source: bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes],
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mkdirs: bool = False,
    timeout: float | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT_S,
) -> int:
    """Write a file in the guest, atomically (temp file + rename there).

    :param guest_path: absolute destination path in the guest.
    :param source: the content as bytes, a local file path (``str`` or
        ``PathLike``), or a readable binary file object.
    :param mode: permission bits of the new file.
    :param uid: owner uid in the guest.
    :param gid: owner gid in the guest.
    :param mkdirs: create missing parent directories.
    :param timeout: host-side limit in seconds on waiting for the answer
        after the content was sent (default ``idle_timeout``).
    :param idle_timeout: seconds without progress (credit, answer) before
        giving up; ``None`` waits forever.
    :return: the number of bytes the guest wrote.
    :raises InvalidRequest: if ``guest_path`` is not absolute.
    :raises NotFound: if a local source path does not exist.
    :raises GuestError: if the guest refused (``GuestNotFound`` for a missing
        parent, ``GuestPermissionDenied``, ``io_error``...).
    :raises ChannelTimeout: if the guest made no progress for ``idle_timeout`` seconds.
    :raises ChannelClosed: if the channel went away.
    """
    _check_guest_path(guest_path)
    owned: IO[bytes] | None = None
    if isinstance(source, (str, os.PathLike)):
        try:
            owned = open(source, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError as exc:
            from microagent.errors import NotFound

            raise NotFound(f"local file {os.fspath(source)} does not exist") from exc
        except OSError as exc:
            raise Permanent(f"cannot read local file {os.fspath(source)}: {exc}") from exc
    try:
        with conn.open_session("put", path=guest_path, mode=int(mode), uid=int(uid), gid=int(gid), mkdirs=bool(mkdirs)) as session:
            try:
                try:
                    if isinstance(source, (bytes, bytearray, memoryview)):
                        session.send_data(STDIN, bytes(source), idle_timeout)
                    else:
                        f = owned if owned is not None else source
                        assert not isinstance(f, (str, os.PathLike, bytes, bytearray, memoryview))
                        _send_file(session, f, idle_timeout)
                    session.send_eof(STDIN)
                except SessionEnded:
                    pass  # the guest ended it early: its ERROR/EXIT is queued
                event = session.wait_final(timeout if timeout is not None else idle_timeout)
            except ChannelTimeout as exc:
                raise _stalled("put", guest_path, timeout if timeout is not None else idle_timeout) from exc
            return _int_field(event.body, "bytes")
    finally:
        if owned is not None:
            owned.close()


def _send_file(session: Session, f: IO[bytes], idle_timeout: float | None) -> None:
    while True:
        try:
            chunk = f.read(_READ_CHUNK)
        except OSError as exc:
            raise Permanent(f"cannot read the local source: {exc}") from exc
        if not chunk:
            return
        session.send_data(STDIN, chunk, idle_timeout)


def _stalled(op: str, guest_path: str, idle_timeout: float | None) -> ChannelTimeout:
    return ChannelTimeout(f"{op} {guest_path}: no progress from the guest for {idle_timeout:g} s",
                          "check the workspace with 'microagent status' and 'microagent logs'; "
                          "retry, or raise idle_timeout for a slow guest")


def _int_field(body: dict[str, Any], key: str, default: int = 0) -> int:
    v = body.get(key, default)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _receive(conn: ChannelConnection, guest_path: str, write: Callable[[bytes], object],
             idle_timeout: float | None, max_bytes: int | None = None) -> FileStat:
    _check_guest_path(guest_path)
    stat: dict[str, Any] = {}
    received = 0
    with conn.open_session("get", path=guest_path) as session:
        while True:
            try:
                event = session.recv(idle_timeout)
            except ChannelTimeout as exc:
                raise _stalled("get", guest_path, idle_timeout) from exc
            if isinstance(event, ControlEvent):
                s = event.body.get("stat")
                if isinstance(s, dict):
                    stat = s
                    _check_size(guest_path, _int_field(stat, "size"), max_bytes)
            elif isinstance(event, DataEvent):
                if event.stream == STDOUT and event.data:
                    received += len(event.data)
                    _check_size(guest_path, received, max_bytes)
                    write(event.data)
            elif isinstance(event, ExitEvent):
                sent = _int_field(event.body, "bytes", received)
                if sent != received:
                    raise ProtocolError(f"get {guest_path}: guest reported {sent} bytes but sent {received}")
                return FileStat(
                    size=_int_field(stat, "size", received),
                    mode=_int_field(stat, "mode", 0o644),
                    uid=_int_field(stat, "uid"),
                    gid=_int_field(stat, "gid"),
                    bytes=received,
                )
            elif isinstance(event, ErrorEvent):
                raise event.to_exception()


def _check_size(guest_path: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ResourceExhausted(f"guest file {guest_path} is larger than max_bytes={max_bytes}",
                                "copy it to a local file instead, or pass a larger max_bytes")


def get_to(conn: ChannelConnection, guest_path: str, fileobj: IO[bytes], *,
           idle_timeout: float | None = IDLE_TIMEOUT_S) -> FileStat:
    """Stream a guest file into a writable binary file object.

    :param idle_timeout: seconds the guest may send nothing before the copy fails.
    :raises InvalidRequest: if ``guest_path`` is not absolute.
    :raises GuestError: e.g. ``GuestNotFound``, or code ``is_directory``.
    :raises ChannelTimeout: if the guest went silent for ``idle_timeout`` seconds.
    :raises ChannelClosed: if the channel went away.
    """
    return _receive(conn, guest_path, fileobj.write, idle_timeout)


def get_bytes(conn: ChannelConnection, guest_path: str, *, max_bytes: int | None = DEFAULT_GET_MAX,
              idle_timeout: float | None = IDLE_TIMEOUT_S) -> bytes:
    """Read a whole guest file into memory.

    :param max_bytes: refuse a file larger than this (announced or actually
        sent: the guest's stat is not trusted); ``None`` = no limit.
    :param idle_timeout: seconds the guest may send nothing before the copy fails.
    :raises InvalidRequest: if ``guest_path`` is not absolute.
    :raises ResourceExhausted: if the file is larger than ``max_bytes``.
    :raises GuestError: e.g. ``GuestNotFound``, or code ``is_directory``.
    :raises ChannelTimeout: if the guest went silent for ``idle_timeout`` seconds.
    :raises ChannelClosed: if the channel went away.
    """
    buf = bytearray()
    _receive(conn, guest_path, buf.extend, idle_timeout, max_bytes)
    return bytes(buf)


def get(
    conn: ChannelConnection,
    guest_path: str,
    dest: str | os.PathLike[str],
    *,
    preserve_mode: bool = True,
    idle_timeout: float | None = IDLE_TIMEOUT_S,
) -> FileStat:
    """Copy a guest file to local path ``dest`` (temp file + rename).

    A symlink at ``dest`` is replaced, never written through.

    :param preserve_mode: give ``dest`` the guest file's permission bits,
        without setuid, setgid and sticky, and less the umask (else 0600).
    :param idle_timeout: seconds the guest may send nothing before the copy fails.
    :raises InvalidRequest: if ``guest_path`` is not absolute.
    :raises GuestError: e.g. ``GuestNotFound``, or code ``is_directory``;
        ``dest`` is then left untouched.
    :raises Permanent: if the local file cannot be written.
    :raises ChannelTimeout: if the guest went silent for ``idle_timeout`` seconds.
    :raises ChannelClosed: if the channel went away.
    """
    dest = os.fspath(dest)
    try:
        with atomic_writer(dest) as f:
            stat = _receive(conn, guest_path, f.write, idle_timeout)
            if preserve_mode:
                os.fchmod(f.fileno(), host_mode(stat.mode))
    except OSError as exc:
        raise Permanent(f"cannot write local file {dest}: {exc}") from exc
    return stat


def host_mode(guest_mode: int) -> int:
    """The permission bits a file from the guest gets on the host.

    Only ``rwx`` bits survive (a guest must not hand the host a setuid or
    setgid file), then the process umask applies, as for any new file.
    """
    return guest_mode & 0o777 & ~user_umask()
