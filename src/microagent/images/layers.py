"""Layer extraction: OCI layer tarballs, in order, into one staging tree.

Owns reading layer blobs (uncompressed, gzip or zstd, told apart by their
magic bytes; the media type must name a filesystem layer), applying the OCI
layer semantics (whiteouts ``.wh.NAME``, opaque directories
``.wh..wh..opq``, hard links, symlinks kept as links) and keeping every
entry inside the root.  The staging tree is an ordinary unprivileged
directory; the exact metadata of every path goes into a
:class:`~microagent.images.metadata.Ledger` that :mod:`.ext4` applies to the
built image.

Rules (decisions written down in docs/images.md, "Building root disks"):

* A leading ``/`` is stripped (as docker and tar do); ``.`` components and
  empty components are dropped; a ``..`` component is refused.
* Parents are walked one component at a time with ``O_NOFOLLOW`` directory
  file descriptors: an entry whose path goes through a symlink (planted by an
  earlier entry or layer) is refused, never followed.  Missing parents are
  created (``0755``, root-owned, mtime 0), as docker does.
* Hard links must name an entry already extracted inside the root, and not a
  directory.
* An entry replaces whatever is at its path, except a directory over a
  directory, which merges (the later entry's metadata wins).
* A ``.wh.`` name used as a directory (``.wh.x/y``) is refused: markers
  never reach the tree.
* Names containing a newline or carriage return are refused (debugfs, which
  applies the metadata, cannot address them), and so are a NUL byte,
  components over 255 bytes and paths over :data:`MAX_PATH_BYTES`.
* The number of entries and the apparent size of all files, over all
  layers, are charged to :class:`~.limits.Limits` before each entry is
  written; tar headers are read through :mod:`.tarstream` (bounded headers,
  sparse files kept sparse, hostile values refused).
* The staging tree (``0700``) holds regular files, directories and
  symlinks with safe modes: files get the entry's permission bits plus owner
  read/write, directories ``0700``, never setuid/setgid/sticky; the image's
  modes come from the ledger (so mke2fs copies most of them right and the
  metadata pass fixes the rest).  Device nodes and FIFOs exist only in the
  ledger.
* The ledger records every staged path, so a new path is created without
  looking first (``O_EXCL``, ``mkdir`` and ``symlink`` fail closed if
  something were there); only a path the ledger knows is checked and
  replaced.

A refused entry raises :class:`~microagent.errors.Permanent` naming the entry
and the layer digest; so does a truncated or corrupt layer.
"""

from __future__ import annotations

import base64
import errno
import gzip
import io
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator
from urllib.parse import unquote

from microagent.errors import Permanent, ResourceExhausted
from microagent.images import stagewriter, tarstream
from microagent.images.limits import Limits, resolve
from microagent.images.metadata import NS, Entry, Ledger
from microagent.images.model import Layer
from microagent.images.stagewriter import StageWriter, WriteFailed
from microagent.images.tarstream import BadValue, Broken, Refused

MAX_PATH_BYTES = 4000
MAX_NAME_BYTES = 255
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_FD_CACHE = 256
#: layers from this size (compressed) have their new files written by a
#: :mod:`.stagewriter` child process, in parallel with parsing; smaller ones
#: are not worth its start-up
WRITER_MIN_LAYER_BYTES = 8 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def layer_kind(layer: Layer) -> str:
    """``tar``, ``gzip`` or ``zstd``: what the blob is, by media type and magic.

    The media type must be a filesystem layer type; the magic bytes decide the
    compression (a layer whose bytes disagree with its media type is read as
    what it is, like docker does).

    :raises Permanent: for a media type that is not a filesystem layer.
    """
    from microagent.images.manifest import layer_compression

    layer_compression(layer.media_type)
    try:
        with open(layer.path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise Permanent(f"cannot read layer {layer.digest}: {exc.strerror}",
                        "pull the image again", layer=layer.digest) from exc
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "tar"


class _Guarded(io.RawIOBase):
    """A read-only stream that turns decompression errors into :class:`~.tarstream.Broken`."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buf: "bytearray | memoryview") -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(buf))
        except Exception as exc:  # zlib.error, EOFError, gzip.BadGzipFile, ZstdError, ...
            raise Broken(str(exc) or type(exc).__name__) from exc
        n = len(data)
        buf[:n] = data
        return n

    def close(self) -> None:
        try:
            self._inner.close()  # stops a decompressing thread, closes the blob
        finally:
            super().close()


def _gunzip(raw: IO[bytes]) -> IO[bytes]:
    """A gzip reader of ``raw`` that inflates in a worker thread, pipelined with extraction.

    ISA-L inflates about three times faster than zlib; it is imported here,
    not at module load, so commands that never build a disk do not pay for it.
    """
    try:
        from isal import igzip_threaded
    except ImportError:  # pragma: no cover - a declared dependency
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return _Closing(igzip_threaded.open(raw, "rb", threads=1, block_size=_CHUNK), raw)


class _Closing(io.RawIOBase):
    """``inner``, closing ``raw`` (which ``inner`` does not own) with it."""

    def __init__(self, inner: IO[bytes], raw: IO[bytes]) -> None:
        self._inner, self._raw = inner, raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        return self._inner.read(size)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._raw.close()
            super().close()


def open_layer(layer: Layer) -> io.BufferedReader:
    """The uncompressed tar stream of ``layer`` (caller closes it).

    :raises Permanent: unsupported media type, unreadable blob, or zstd missing.
    """
    kind = layer_kind(layer)
    raw: IO[bytes] = open(layer.path, "rb")
    inner: IO[bytes]
    if kind == "gzip":
        inner = _gunzip(raw)
    elif kind == "zstd":
        try:
            import zstandard
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raw.close()
            raise Permanent(f"layer {layer.digest} is zstd-compressed and the zstandard module is missing",
                            "pip install zstandard") from exc
        inner = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
    else:
        inner = raw
    return io.BufferedReader(_Guarded(inner), buffer_size=_CHUNK)


@dataclass
class _Ctx:
    layer: Layer
    touched: set[str]  # paths (and their ancestors) this layer created


class Extractor:
    """Applies layers in order to one staging root and its ledger.

    :param root: an existing, empty directory (made ``0700``).
    :param limits: entry count and extracted bytes allowed over all layers
        (default: :meth:`~.limits.Limits.from_env`).
    :param writer_min_bytes: the layer size from which new files are written
        by a :class:`~.stagewriter.StageWriter` process.
    """

    def __init__(self, root: Path, ledger: Ledger | None = None, limits: Limits | None = None, *,
                 writer_min_bytes: int = WRITER_MIN_LAYER_BYTES) -> None:
        self.root = Path(root)
        self.writer_min_bytes = writer_min_bytes
        self._writer: StageWriter | None = None
        self.ledger = ledger if ledger is not None else Ledger()
        self.limits = resolve(limits)
        self.entries = 0
        self.extracted_bytes = 0  # apparent sizes: a sparse file counts whole
        os.chmod(self.root, 0o700)
        self._root_fd = os.open(self.root, _DIR_FLAGS)
        self._fds: dict[str, int] = {}

    def close(self) -> None:
        self._drop_fds()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> "Extractor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- layers --------------------------------------------------------------

    def apply(self, layer: Layer, on_bytes: Callable[[int], None] | None = None) -> None:
        """Extract one layer on top of what is there.

        :raises Permanent: corrupt/truncated layer, a refused entry (names both),
            or a limit exceeded (names the limit and how to raise it).
        :raises ResourceExhausted: the staging filesystem is full.
        """
        ctx = _Ctx(layer, set())
        with open_layer(layer) as stream:
            try:
                if not stream.peek(1):
                    return  # an empty blob is an empty layer
                if layer.size >= self.writer_min_bytes and stagewriter.available():
                    try:
                        self._writer = StageWriter(self._root_fd)
                    except OSError:
                        pass  # no process to spare: write the files here
                with tarstream.open_stream(stream) as tf:
                    while (member := tarstream.next_member(tf)) is not None:
                        self._count(ctx, member)
                        self._entry(tf, member, ctx)
                self._settle()  # the tree is whole whenever apply returns
            except WriteFailed as exc:
                if exc.error.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceExhausted(f"no space left staging layer {layer.digest}",
                                            "free disk space under the state directory") from exc
                raise self._refuse(ctx, exc.label, exc.error.strerror or str(exc.error)) from None
            except Refused as exc:
                raise Permanent(f"layer {layer.digest} refused: it has {exc}",
                                "the image is malformed or hostile; rebuild it", layer=layer.digest) from exc
            except (Broken, tarfile.TarError, EOFError, zlib.error) as exc:
                raise Permanent(f"layer {layer.digest} is truncated or corrupt: {exc}",
                                "pull the image again; if it persists the image itself is broken",
                                layer=layer.digest) from exc
            finally:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None

    def _settle(self) -> None:
        """Wait for the files the writer has queued (before anything looks at or removes a path)."""
        if self._writer is not None:
            self._writer.sync()

    def _count(self, ctx: _Ctx, member: tarfile.TarInfo) -> None:
        """Charge one entry (and a file's apparent size) to the limits, before anything is written."""
        self.entries += 1
        if self.entries > self.limits.entries:
            raise self.limits.exceeded("entries", f"layer {ctx.layer.digest}: the image's number of tar entries")
        if member.isreg():
            self.extracted_bytes += max(member.size, 0)
            if self.extracted_bytes > self.limits.extracted_bytes:
                raise self.limits.exceeded(
                    "extracted_bytes", f"layer {ctx.layer.digest}: the image's extracted size, at {member.name!r},",
                    self.extracted_bytes)

    def finish(self) -> Ledger:
        """Set staged timestamps from the ledger (after the last layer) and return it."""
        for rel, entry in self.ledger.items():
            if entry.special:
                continue
            atime = entry.mtime_ns if entry.atime_ns is None else entry.atime_ns
            a, m = atime // NS * NS, entry.mtime_ns // NS * NS
            try:
                os.utime(rel or ".", ns=(a, m), dir_fd=self._root_fd, follow_symlinks=False)
            except (OSError, OverflowError):
                pass  # out of the host's range: the debugfs step writes it
        return self.ledger

    # -- entries -------------------------------------------------------------

    def _refuse(self, ctx: _Ctx, name: str, why: str) -> Permanent:
        return Permanent(f"layer {ctx.layer.digest}: entry {name!r} refused: {why}",
                         "the image is malformed or hostile; rebuild it without that entry",
                         layer=ctx.layer.digest, entry=name)

    def _parts(self, ctx: _Ctx, name: str, path: str | None = None) -> list[str]:
        """``path`` (default ``name``) split and checked; errors name the entry ``name``."""
        what = "its" if path is None else "its link target's"
        path = name if path is None else path
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(ctx, name, f"{'it' if what == 'its' else 'its link target'} contains a '..' component")
        if "\x00" in path:
            raise self._refuse(ctx, name, f"{what} name contains a NUL byte")
        if any(p.startswith(WHITEOUT) for p in parts[:-1]):
            raise self._refuse(ctx, name, "a whiteout marker (.wh.) is used as a directory")
        for p in parts:
            raw = os.fsencode(p)
            if b"\n" in raw or b"\r" in raw:
                raise self._refuse(ctx, name, f"{what} name contains a newline")
            if len(raw) > MAX_NAME_BYTES:
                raise self._refuse(ctx, name, f"a path component is longer than {MAX_NAME_BYTES} bytes")
        if len(os.fsencode("/".join(parts))) > MAX_PATH_BYTES:
            raise self._refuse(ctx, name, f"the path is longer than {MAX_PATH_BYTES} bytes")
        return parts

    def _walk(self, ctx: _Ctx, name: str, parts: list[str], create: bool) -> int | None:
        """An fd (caller closes) of the directory holding ``parts[-1]``; ``None`` if missing and not ``create``."""
        fd = self._dir_fd(ctx, name, parts, create)
        return None if fd is None else os.dup(fd)

    def _dir_fd(self, ctx: _Ctx, name: str, parts: list[str], create: bool) -> int | None:
        """Like :meth:`_walk`, but the fd is borrowed from the cache: valid until the next removal or walk.

        Directories already walked are kept open in a small cache (tar
        entries come grouped by directory); any removal of a directory
        empties it, so a cached fd always names the directory at that path.
        """
        prefix = "/".join(parts[:-1])
        cached = self._fds.get(prefix)
        if cached is not None:
            return cached
        fd = os.dup(self._root_fd)
        try:
            for i, comp in enumerate(parts[:-1]):
                rel = "/".join(parts[: i + 1])
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if rel in self.ledger:  # a device node or FIFO
                        raise self._refuse(ctx, name, f"{rel!r} is not a directory") from None
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(comp, 0o700, dir_fd=fd)
                    self.ledger.put(rel, Entry("dir", 0o755))
                    ctx.touched.add(rel)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.lstat(comp, dir_fd=fd)
                    if stat.S_ISLNK(st.st_mode):
                        raise self._refuse(ctx, name, f"it goes through the symlink {rel!r}") from None
                    raise self._refuse(ctx, name, f"{rel!r} is not a directory") from None
                os.close(fd)
                fd = nfd
            if len(self._fds) >= _FD_CACHE:
                self._drop_fds()
            self._fds[prefix] = fd
            return fd
        except BaseException:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise

    def _drop_fds(self) -> None:
        for cached in self._fds.values():
            os.close(cached)
        self._fds.clear()

    def _remove(self, pfd: int, name: str, rel: str) -> None:
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            self.ledger.remove(rel)
            return
        if stat.S_ISDIR(st.st_mode):
            self._drop_fds()
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        self.ledger.remove(rel)

    def _entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo, ctx: _Ctx) -> None:
        name = member.name
        try:
            self._entry_inner(tf, member, ctx)
        except BadValue as exc:
            raise self._refuse(ctx, name, str(exc)) from None
        except (Permanent, Broken, Refused, tarfile.TarError, WriteFailed):
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceExhausted(f"no space left staging layer {ctx.layer.digest}",
                                        "free disk space under the state directory") from exc
            raise self._refuse(ctx, name, exc.strerror or str(exc)) from exc

    def _entry_inner(self, tf: tarfile.TarFile, member: tarfile.TarInfo, ctx: _Ctx) -> None:
        name = member.name
        parts = self._parts(ctx, name)
        base = parts[-1] if parts else ""
        if base.startswith(WHITEOUT):
            self._whiteout(ctx, name, parts)
            return
        if not parts:
            if not member.isdir():
                raise self._refuse(ctx, name, "the root can only be a directory")
            self.ledger.put("", _meta(member, "dir"))
            return
        rel = "/".join(parts)
        if member.islnk():
            self._hardlink(ctx, member, parts, rel)
            return
        kind = _kind(member)
        if kind is None:
            raise self._refuse(ctx, name, f"unsupported tar entry type {member.type!r}")
        entry = _meta(member, kind)
        if kind == "symlink" and not member.linkname:
            raise self._refuse(ctx, name, "symlink with an empty target")
        if rel not in self.ledger:
            # The common case, a new path: the ledger records every staged path, so
            # nothing is there to replace (O_EXCL / mkdir / symlink fail closed if it were).
            pfd = self._dir_fd(ctx, name, parts, create=True)
            assert pfd is not None
            if kind == "file" and self._writer is not None and member.sparse is None:
                self._writer.file("/".join(parts[:-1]), base, _file_mode(entry), member.size,
                                  lambda fd: tarstream.copy_member(tf, member, fd))
            else:
                self._create(tf, member, entry, pfd, base)
        else:
            self._settle()
            owned = self._walk(ctx, name, parts, create=True)
            assert owned is not None
            try:
                existing: os.stat_result | None
                try:
                    existing = os.lstat(base, dir_fd=owned)
                except FileNotFoundError:
                    existing = None
                if not (kind == "dir" and existing is not None and stat.S_ISDIR(existing.st_mode)):
                    self._remove(owned, base, rel)
                    self._create(tf, member, entry, owned, base)
            finally:
                os.close(owned)
        self.ledger.put(rel, entry)
        ctx.touched.update("/".join(parts[: i + 1]) for i in range(len(parts)))

    def _create(self, tf: tarfile.TarFile, member: tarfile.TarInfo, entry: Entry, pfd: int, base: str) -> None:
        """Stage a new ``base`` in ``pfd``; char/block/fifo exist only in the ledger."""
        kind = entry.kind
        if kind == "dir":
            os.mkdir(base, 0o700, dir_fd=pfd)
        elif kind == "file":
            # the umask may take bits away: the metadata pass puts them back
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         _file_mode(entry), dir_fd=pfd)
            try:
                tarstream.copy_member(tf, member, fd)
            finally:
                os.close(fd)
        elif kind == "symlink":
            os.symlink(tarstream.check_text(member.linkname, "its link target"), base, dir_fd=pfd)

    def _hardlink(self, ctx: _Ctx, member: tarfile.TarInfo, parts: list[str], rel: str) -> None:
        name = member.name
        self._settle()
        tparts = self._parts(ctx, name, member.linkname)
        if not tparts:
            raise self._refuse(ctx, name, "hard link to the root directory")
        trel = "/".join(tparts)
        if trel == rel:
            return  # a link to itself changes nothing
        target = self.ledger.get(trel)
        if target is None:
            raise self._refuse(ctx, name, f"hard link target {member.linkname!r} is not in the image")
        if target.kind == "dir":
            raise self._refuse(ctx, name, f"hard link target {member.linkname!r} is a directory")
        tfd = self._walk(ctx, name, tparts, create=False)
        if tfd is None:
            raise self._refuse(ctx, name, f"hard link target {member.linkname!r} is not in the image")
        try:
            pfd = self._walk(ctx, name, parts, create=True)
            assert pfd is not None
            try:
                self._remove(pfd, parts[-1], rel)
                if not target.special:
                    os.link(tparts[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
                self.ledger.put(rel, target)
                ctx.touched.update("/".join(parts[: i + 1]) for i in range(len(parts)))
            finally:
                os.close(pfd)
        finally:
            os.close(tfd)

    def _whiteout(self, ctx: _Ctx, name: str, parts: list[str]) -> None:
        self._settle()
        base = parts[-1]
        dparts = parts[:-1]
        if base == OPAQUE:
            drel = "/".join(dparts)
            if dparts:
                pfd = self._walk(ctx, name, dparts, create=False)
                if pfd is None:
                    return
                try:
                    fd = os.open(dparts[-1], _DIR_FLAGS, dir_fd=pfd)
                except OSError:
                    return  # nothing (or no directory) to make opaque
                finally:
                    os.close(pfd)
            else:
                fd = os.dup(self._root_fd)
            try:
                self._opaque(fd, drel, ctx)
            finally:
                os.close(fd)
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return  # other AUFS metadata (.wh..wh.plnk, ...): not part of the tree
        target = base[len(WHITEOUT):]
        if target in ("", ".", ".."):
            raise self._refuse(ctx, name, "whiteout of an invalid name")
        tparts = [*dparts, target]
        trel = "/".join(tparts)
        if trel in ctx.touched:
            return  # whiteouts hide lower layers only
        pfd = self._walk(ctx, name, tparts, create=False)
        if pfd is None:
            return
        try:
            self._remove(pfd, target, trel)
        finally:
            os.close(pfd)

    def _opaque(self, dfd: int, drel: str, ctx: _Ctx) -> None:
        """Remove what lower layers put under ``drel``; keep this layer's entries."""
        for child in self.ledger.children(drel):
            crel = f"{drel}/{child}" if drel else child
            if crel not in ctx.touched:
                self._remove(dfd, child, crel)
                continue
            entry = self.ledger.get(crel)
            if entry is not None and entry.kind == "dir":
                cfd = os.open(child, _DIR_FLAGS, dir_fd=dfd)
                try:
                    self._opaque(cfd, crel, ctx)
                finally:
                    os.close(cfd)


def _kind(member: tarfile.TarInfo) -> str | None:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.ischr():
        return "char"
    if member.isblk():
        return "block"
    if member.isfifo():
        return "fifo"
    return None


def _file_mode(entry: Entry) -> int:
    """A staged file's mode: the entry's permission bits plus owner read/write, nothing special."""
    return (entry.mode & 0o777) | 0o600


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out[key[len("SCHILY.xattr."):]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            try:
                out[unquote(key[len("LIBARCHIVE.xattr."):])] = base64.b64decode(value + "=" * (-len(value) % 4))
            except ValueError:
                continue
    for name, data in out.items():
        tarstream.check_xattr(name, data)
    return out


def _meta(member: tarfile.TarInfo, kind: str) -> Entry:
    """The ledger entry of ``member``.

    :raises BadValue: a time, id, device number or xattr that cannot be stored.
    """
    mtime = tarstream.time_ns(member, "mtime")
    assert mtime is not None
    mode = 0o777 if kind == "symlink" else member.mode & 0o7777
    uid, gid = tarstream.owner(member)
    major, minor = tarstream.device(member) if kind in ("char", "block") else (0, 0)
    return Entry(kind=kind, mode=mode, uid=uid, gid=gid, mtime_ns=mtime,
                 atime_ns=tarstream.time_ns(member, "atime"), major=major, minor=minor,
                 xattrs=_xattrs(member))


def extract_layers(layers: Iterable[Layer], root: Path, *,
                   on_layer: Callable[[int, Layer], None] | None = None, limits: Limits | None = None,
                   writer_min_bytes: int = WRITER_MIN_LAYER_BYTES) -> Ledger:
    """Extract ``layers`` in order into the empty directory ``root``.

    :param on_layer: called with (index, layer) before each layer (progress).
    :param writer_min_bytes: see :class:`Extractor`.
    :returns: the ledger of every path's exact metadata.
    :raises Permanent: a corrupt layer, an unsupported media type, a refused
        entry or a limit exceeded.
    :raises ResourceExhausted: the staging filesystem is full.
    """
    with Extractor(root, limits=limits, writer_min_bytes=writer_min_bytes) as ex:
        for i, layer in enumerate(layers):
            if on_layer is not None:
                on_layer(i, layer)
            ex.apply(layer)
        return ex.finish()


def resolve_in_root(root: Path, rel: str, *, max_hops: int = 40) -> str | None:
    """``rel`` with every symlink resolved *inside* ``root`` (``None`` if a part is missing).

    Absolute link targets are taken relative to ``root`` and ``..`` stops at
    it, the way a chroot would see the tree.  The last component is resolved
    too.  Used to find ``/etc/passwd`` or ``/sbin`` in merged-/usr images.
    """
    todo = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        comp = todo.pop(0)
        if comp == "..":
            if done:
                done.pop()
            continue
        path = root.joinpath(*done, comp)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > max_hops:
                return None
            target = os.readlink(path)
            tparts = [p for p in target.split("/") if p not in ("", ".")]
            if target.startswith("/"):
                done = []
            todo = tparts + todo
            continue
        done.append(comp)
    return "/".join(done)


def iter_members(layer: Layer) -> Iterator[tarfile.TarInfo]:
    """The tar headers of ``layer`` (for tests and diagnostics)."""
    with open_layer(layer) as stream, tarstream.open_stream(stream) as tf:
        yield from tf
