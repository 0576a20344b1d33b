"""``--output HOST_DIR=/guest/path``: copy a run's results back to the host (docs/volumes.md).

Works over the live guest's channel, so on every backend (it is how results
leave a Firecracker guest, whose host folders are snapshots).  After the
command finished and before the VM goes away, the guest path is copied into
the host directory ``HOST_DIR`` (created if missing; an existing file there is
refused): a guest *file* lands as ``HOST_DIR/<its name>``, a guest *directory*
has its tree copied into ``HOST_DIR``.  The guest lists the tree (``find``, run
as root); each regular file comes back with a ``get`` session.  Symlinks and
special files are skipped.

Nothing the guest says is trusted: every listed path must lie under the guest
path and have no ``.``/``..`` components, the host side is walked one
component at a time with ``O_NOFOLLOW`` (a symlink already in ``HOST_DIR``
is never written through), and the total bytes and files are capped.
Directories are created 0700 and files 0600, whatever the umask.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from microagent.errors import Conflict, InvalidRequest, NotFound, Permanent, ResourceExhausted

if TYPE_CHECKING:
    from microagent.channel import ChannelConnection

MAX_OUTPUTS = 16
MAX_BYTES = 1 << 30
"""Total bytes all ``--output`` copies of one run may bring back."""
MAX_FILES = 20_000
LIST_LIMIT = 8 << 20  # bytes of ``find`` output (paths) the guest may send
_FORM = "use --output HOST_DIR=/guest/path, e.g. --output ./out=/work/out"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputSpec(Struct, frozen=True):
    """Copy guest path ``guest`` into host directory ``host`` (absolute)."""

    host: str
    guest: str

    def to_spec(self) -> str:
        return f"{self.host}={self.guest}"


def parse_output_spec(spec: str) -> OutputSpec:
    """``HOST_DIR=/guest/path`` (split at the first ``=/``).

    :raises InvalidRequest: a malformed spec, a bad guest path, or a ``HOST_DIR``
        that exists and is not a directory.
    """
    from microagent.workspace.volumes import check_guest_path

    if not isinstance(spec, str) or "=/" not in spec:
        raise InvalidRequest(f"output spec {spec!r} has no =/guest/path", _FORM)
    host, guest = spec.split("=/", 1)
    if not host or "\x00" in host:
        raise InvalidRequest(f"output spec {spec!r} has no host directory", _FORM)
    guest = check_guest_path("/" + guest, f"output spec {spec!r}: guest path")
    host = os.path.abspath(os.path.expanduser(host))
    if os.path.lexists(host) and not os.path.isdir(host):
        raise InvalidRequest(f"output destination {host} exists and is not a directory",
                             "give a directory (it is created if missing)")
    return OutputSpec(host, guest)


def parse_output_specs(specs: Sequence[str]) -> tuple[OutputSpec, ...]:
    """:raises InvalidRequest: a bad spec, or more than :data:`MAX_OUTPUTS`."""
    if isinstance(specs, str):
        raise InvalidRequest("outputs must be a list of specs, not one string", _FORM)
    outs = tuple(parse_output_spec(s) for s in specs)
    if len(outs) > MAX_OUTPUTS:
        raise InvalidRequest(f"{len(outs)} outputs; at most {MAX_OUTPUTS}")
    return outs


class _Budget:
    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.bytes_left, self.files_left = max_bytes, max_files
        self.max_bytes, self.max_files = max_bytes, max_files

    def file(self, guest_path: str) -> None:
        self.files_left -= 1
        if self.files_left < 0:
            raise ResourceExhausted(f"--output brings back more than {self.max_files} files (at {guest_path})",
                                    "copy a smaller directory, or archive it in the guest first")

    def take(self, guest_path: str, n: int) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise ResourceExhausted(f"--output brings back more than {self.max_bytes} bytes (at {guest_path})",
                                    "copy less, or compress it in the guest first")


class _Sink:
    """A file object for ``get_to``: writes to ``fd``, charging the budget first."""

    def __init__(self, fd: int, budget: _Budget, guest_path: str) -> None:
        self.fd, self.budget, self.guest_path = fd, budget, guest_path

    def write(self, data: bytes) -> int:
        self.budget.take(self.guest_path, len(data))
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(data)


def _open_subdir(parent_fd: int, name: str, host_path: str) -> int:
    """``name`` inside ``parent_fd``, created 0700 if missing, never through a symlink."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:  # ELOOP (a symlink) or ENOTDIR (a file)
        raise Conflict(f"cannot copy output into {host_path}: it is a symlink or not a directory",
                       "remove it, or give another --output directory") from exc


def _walk(root_fd: int, parts: Sequence[str], host_root: str) -> int:
    """An fd of ``root/parts...``, each component created and opened without following symlinks."""
    fd = os.dup(root_fd)
    path = host_root
    for part in parts:
        path = os.path.join(path, part)
        try:
            nxt = _open_subdir(fd, part, path)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def _fetch(conn: "ChannelConnection", guest_path: str, dir_fd: int, name: str, host_path: str,
           budget: _Budget) -> int:
    """One guest file into ``dir_fd/name`` (temp file + rename, 0600); its size."""
    from microagent.channel.files import get_to

    budget.file(guest_path)
    tmp = f".{name[:200]}.microagent-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            stat = get_to(conn, guest_path, _Sink(fd, budget, guest_path))  # type: ignore[arg-type]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # replaces a symlink, never follows it
    except BaseException as exc:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        if isinstance(exc, IsADirectoryError):
            raise Conflict(f"cannot copy {guest_path} to {host_path}: a directory is in the way",
                           "remove it, or give another --output directory") from exc
        if isinstance(exc, OSError):
            raise Permanent(f"cannot write {host_path}: {exc.strerror}") from exc
        raise
    return stat.bytes


def _list(conn: "ChannelConnection", root: str, kind: str) -> list[str]:
    """Paths under guest directory ``root`` of ``find -type kind``, relative, validated."""
    from microagent.channel import ExecRequest
    from microagent.channel import exec as guest_exec

    req = ExecRequest(argv=["find", root, "-mindepth", "1", "-type", kind, "-print0"], user="0",
                      timeout_s=120, stdout_limit=LIST_LIMIT, stderr_limit=64 * 1024)
    result = guest_exec.start(conn, req).wait()
    if result.status == "failed_to_start":
        raise NotFound(f"cannot list {root} in the guest: it has no 'find'",
                       "use an image with find (busybox, coreutils), or copy single files")
    if result.exit_code != 0:
        raise Permanent(f"listing {root} in the guest failed ({result.exit_code}): "
                        f"{result.stderr.decode('utf-8', 'replace').strip()[:500]}")
    if result.stdout_truncated:
        raise ResourceExhausted(f"{root} in the guest lists more than {LIST_LIMIT} bytes of paths",
                                "copy a smaller directory, or archive it in the guest first")
    out = []
    for raw in result.stdout.split(b"\0"):
        if not raw:
            continue
        path = raw.decode("utf-8", "surrogateescape")
        if not path.startswith(root + "/"):
            raise Permanent(f"the guest listed {path!r}, which is not under {root}")
        rel = path[len(root) + 1:]
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise Permanent(f"the guest listed {path!r}, which is not a plain path under {root}")
        out.append(rel)
    return out


def copy_output(conn: "ChannelConnection", spec: OutputSpec, budget: _Budget) -> dict[str, Any]:
    """Copy one output; a summary ``{host, guest, files, bytes}``.

    :raises NotFound: the guest path does not exist.
    """
    from microagent.channel.errors import GuestError, GuestNotFound

    os.makedirs(spec.host, 0o700, exist_ok=True)
    try:
        root_fd = os.open(spec.host, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise Permanent(f"cannot open output directory {spec.host}: {exc.strerror}") from exc
    files = size = 0
    try:
        name = os.path.basename(spec.guest)
        try:
            size = _fetch(conn, spec.guest, root_fd, name, os.path.join(spec.host, name), budget)
            files = 1
        except GuestNotFound:
            raise NotFound(f"--output: {spec.guest} does not exist in the guest",
                           "check the path the command writes to") from None
        except GuestError as exc:
            if exc.code != "is_directory":
                raise
            budget.files_left += 1  # the probe was not a file
            for rel in _list(conn, spec.guest, "d"):
                os.close(_walk(root_fd, rel.split("/"), spec.host))
            for rel in _list(conn, spec.guest, "f"):
                *dirs, base = rel.split("/")
                dir_fd = _walk(root_fd, dirs, spec.host)
                try:
                    size += _fetch(conn, f"{spec.guest}/{rel}", dir_fd, base, os.path.join(spec.host, rel), budget)
                finally:
                    os.close(dir_fd)
                files += 1
    finally:
        os.close(root_fd)
    return {"host": spec.host, "guest": spec.guest, "files": files, "bytes": size}


def copy_outputs(conn: "ChannelConnection", specs: Sequence[OutputSpec], *, max_bytes: int | None = None,
                 max_files: int | None = None) -> list[dict[str, Any]]:
    """Every output in order, within one budget (default :data:`MAX_BYTES`, :data:`MAX_FILES`).

    :raises ResourceExhausted: past the budget (what was copied so far stays).
    """
    budget = _Budget(max_bytes or MAX_BYTES, max_files or MAX_FILES)
    return [copy_output(conn, spec, budget) for spec in specs]
