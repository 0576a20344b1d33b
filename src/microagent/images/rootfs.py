"""Base root disks: a pulled image's layers → one cached, bootable ext4 file.

Owns the build order and the disk cache.  :func:`build_base_disk` extracts
the layers (:mod:`.layers`) into a private staging tree, injects guest init
as ``/sbin/microagent-init`` (``0755``, root-owned), resolves the image's
``User`` to numeric ``uid:gid`` from the image's own ``/etc/passwd`` and
``/etc/group``, builds the ext4 image and applies the metadata ledger
(:mod:`.ext4`, :mod:`.metadata`).

Cache layout (under ``<state>/images/disks/``)::

    <manifest-digest-hex>-<os>-<arch>[-<variant>].ext4    the base disk
    <same>.json                                           sidecar: init sha, config, user
    <same>.lock                                           flock: one builder at a time

A disk is reused when its sidecar names the same guest init sha256, build
format and (when given) size; otherwise it is rebuilt.  Concurrent builders
of one disk serialise on the lock and the second finds the first's disk.
Nothing per-workspace goes into a base disk: the same image digest, platform
and guest init give a byte-identical file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from msgspec import structs

from microagent.digests import sha256_file
from microagent.errors import Permanent, ResourceExhausted
from microagent.fsutil import atomic_write
from microagent.images.ext4 import build_ext4
from microagent.images.model import BaseImage, ImageConfig, Platform, PulledImage
from microagent.images.untrusted import check_platform, digest_hex, inside

if TYPE_CHECKING:  # extraction is for builds; a run of a cached image loads none of it
    from microagent.images.limits import Limits
    from microagent.images.metadata import Ledger

#: Bump when the disk format or build steps change: old disks are rebuilt.
BUILD_FORMAT = 1
GUEST_INIT_PATH = "sbin/microagent-init"
SIDECAR_SCHEMA = 1


class BuildProgress(Protocol):
    """What a build reports (a TTY renderer, or nothing)."""

    def on_build_start(self, reference: str, layers: int) -> None: ...

    def on_build_layer(self, index: int, digest: str) -> None: ...

    def on_build_done(self, disk: Path) -> None: ...


def disks_dir(state_root: Path) -> Path:
    return Path(state_root) / "images" / "disks"


def disk_path(state_root: Path, digest: str, platform: Platform) -> Path:
    """Where the base disk of ``digest`` for ``platform`` lives.

    :raises Permanent: the digest or a platform field is not safe in a file
        name, or the result would lie outside the disks directory.
    """
    hexpart = digest_hex(digest, "base disk")
    check_platform(platform, f"base disk of {digest}", required=True)
    plat = f"{platform.os}-{platform.architecture}" + (f"-{platform.variant}" if platform.variant else "")
    base = disks_dir(state_root)
    path = base / f"{hexpart}-{plat}.ext4"
    inside(base, path, f"base disk of {digest}")
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _config_to_json(config: ImageConfig) -> dict[str, object]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in structs.asdict(config).items()}


def _config_from_json(doc: dict[str, Any]) -> ImageConfig:
    fields: dict[str, Any] = {}
    for k, v in doc.items():
        if k in ImageConfig.__struct_fields__:
            fields[k] = tuple(v) if isinstance(v, list) else v
    return ImageConfig(**fields)


def _read_sidecar(path: Path) -> dict[str, object] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == SIDECAR_SCHEMA else None


def _write_json(path: Path, doc: dict[str, object]) -> None:
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def cached_base_disk(image: PulledImage, state_root: Path, guest_init: Path, *,
                     size_bytes: int | None = None, init_sha: str | None = None) -> BaseImage | None:
    """The cached base disk of ``image`` if it is current, else ``None`` (no building)."""
    disk = disk_path(state_root, image.digest, image.platform)
    side = _read_sidecar(disk.with_suffix(".json"))
    if side is None or not disk.is_file():
        return None
    if side.get("build_format") != BUILD_FORMAT:
        return None
    if side.get("guest_init_sha256") != (init_sha or sha256_file(guest_init)):
        return None
    if size_bytes is not None and side.get("size_bytes") != size_bytes:
        return None
    raw_config = side.get("config")
    config = _config_from_json(raw_config if isinstance(raw_config, dict) else {})
    return BaseImage(reference=image.reference, digest=image.digest, disk=disk, config=config,
                     platform=image.platform)


def build_base_disk(image: PulledImage, state_root: Path, guest_init: Path, *,
                    size_bytes: int | None = None, progress: BuildProgress | None = None,
                    limits: Limits | None = None) -> BaseImage:
    """The bootable base disk of ``image``, built once and cached.

    :param size_bytes: exact disk size; default: content plus headroom.
    :param limits: extraction limits (default: :meth:`~.limits.Limits.from_env`).
    :raises Permanent: a refused layer entry, a corrupt layer, an extraction
        limit exceeded, an image user that does not exist, or a non-Linux image.
    :raises ResourceExhausted: the content does not fit ``size_bytes``, or the disk is full.
    :raises NotFound: mke2fs/debugfs missing.
    """
    if image.platform.os != "linux":
        raise Permanent(f"image {image.reference} is for {image.platform}, not linux",
                        "use a linux image")
    state_root = Path(state_root)
    init_sha = sha256_file(guest_init)
    disk = disk_path(state_root, image.digest, image.platform)
    hit = cached_base_disk(image, state_root, guest_init, size_bytes=size_bytes, init_sha=init_sha)
    if hit is not None:
        return hit
    with _locked(disk.with_suffix(".lock")):
        hit = cached_base_disk(image, state_root, guest_init, size_bytes=size_bytes, init_sha=init_sha)
        if hit is not None:
            return hit
        from microagent.images.layers import Extractor

        tmp_root = Path(state_root) / "images" / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="rootfs-", dir=tmp_root))
        try:
            if progress is not None:
                progress.on_build_start(image.reference, len(image.layers))
            tree = staging / "root"
            tree.mkdir()
            with Extractor(tree, limits=limits) as ex:
                for i, layer in enumerate(image.layers):
                    if progress is not None:
                        progress.on_build_layer(i, layer.digest)
                    ex.apply(layer)
                inject_guest_init(tree, ex.ledger, guest_init)
                ledger = ex.finish()
            user = resolve_user(image.config.user, tree, image.reference)
            config = structs.replace(image.config, user=user)
            build_ext4(tree, disk, key=f"{image.digest}/{image.platform}", size_bytes=size_bytes,
                       ledger=ledger)
            _write_json(disk.with_suffix(".json"), {
                "schema": SIDECAR_SCHEMA,
                "build_format": BUILD_FORMAT,
                "reference": image.reference,
                "digest": image.digest,
                "platform": str(image.platform),
                "guest_init_sha256": init_sha,
                "size_bytes": size_bytes,
                "image_user": image.config.user,
                "config": _config_to_json(config),
                "layers": [layer.digest for layer in image.layers],
            })
        except OSError as exc:
            if exc.errno == 28:
                raise ResourceExhausted(f"no space left building the disk of {image.reference}",
                                        "free disk space under the state directory") from exc
            raise Permanent(f"cannot build the disk of {image.reference}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if progress is not None:
            progress.on_build_done(disk)
        return BaseImage(reference=image.reference, digest=image.digest, disk=disk, config=config,
                         platform=image.platform)


def inject_guest_init(tree: Path, ledger: Ledger, guest_init: Path) -> None:
    """Put guest init at ``/sbin/microagent-init`` (``0755``, ``0:0``).

    ``/sbin`` is resolved inside the image (merged-/usr images have
    ``/sbin -> usr/sbin``); a missing directory is created ``0755``.

    :raises Permanent: when ``/sbin`` resolves to something that is not a directory.
    """
    from microagent.images.layers import resolve_in_root
    from microagent.images.metadata import Entry

    sbin = resolve_in_root(tree, "sbin")
    if sbin is None:
        # missing, or a dangling link: create the directories it names (or /sbin)
        sbin = _dangling_target(tree, "sbin") or "sbin"
        _mkdirs(tree, ledger, sbin)
    target = tree / sbin
    if not target.is_dir() or target.is_symlink():
        raise Permanent(f"the image's /sbin ({'/' + sbin}) is not a directory; guest init cannot be installed",
                        "use an image with a /sbin directory")
    rel = f"{sbin}/microagent-init" if sbin else "microagent-init"
    dst = tree / rel
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    ledger.remove(rel)
    shutil.copyfile(guest_init, dst)
    os.chmod(dst, 0o755)
    ledger.put(rel, Entry("file", 0o755, 0, 0, mtime_ns=0))


def _dangling_target(tree: Path, rel: str) -> str | None:
    path = tree / rel
    if not path.is_symlink():
        return None
    target = os.readlink(path)
    parts = [p for p in target.split("/") if p not in ("", ".", "..")]
    if not target.startswith("/"):
        parts = [*rel.split("/")[:-1], *parts]
    return "/".join(parts) or None


def _mkdirs(tree: Path, ledger: Ledger, rel: str) -> None:
    from microagent.images.metadata import Entry

    parts = rel.split("/")
    for i in range(len(parts)):
        sub = "/".join(parts[: i + 1])
        p = tree / sub
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise Permanent(f"cannot create /{sub} in the image: something else is there",
                            "use an image with a /sbin directory")
        if not p.exists():
            p.mkdir(mode=0o755)
            ledger.put(sub, Entry("dir", 0o755))


def _read_db(tree: Path, rel: str) -> list[list[str]]:
    from microagent.images.layers import resolve_in_root

    resolved = resolve_in_root(tree, rel)
    if resolved is None:
        return []
    path = tree / resolved
    try:
        if not path.is_file() or path.stat().st_size > 4 << 20:
            return []
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(user: str, tree: Path, reference: str = "the image") -> str:
    """The image's ``User`` as numeric ``uid:gid`` (``""`` when unset).

    Names are looked up in the image's own ``/etc/passwd`` and ``/etc/group``;
    a numeric uid not in passwd gets gid 0, as docker does.

    :raises Permanent: when a named user or group does not exist in the image.
    """
    if not user:
        return ""
    upart, sep, gpart = user.partition(":")
    passwd = _read_db(tree, "etc/passwd")
    uid: int | None = None
    gid = 0
    if upart.isdigit():
        uid = int(upart)
        for f in passwd:
            if len(f) >= 4 and f[2].isdigit() and int(f[2]) == uid and f[3].isdigit():
                gid = int(f[3])
                break
    else:
        for f in passwd:
            if len(f) >= 4 and f[0] == upart and f[2].isdigit() and f[3].isdigit():
                uid, gid = int(f[2]), int(f[3])
                break
        if uid is None:
            if upart == "root":
                uid, gid = 0, 0
            else:
                raise Permanent(f"image {reference}: user {upart!r} (from the image's User) does not exist "
                                "in the image's /etc/passwd",
                                "fix the image's USER, or pass --user with a numeric uid[:gid]")
    if sep:
        if gpart.isdigit():
            gid = int(gpart)
        else:
            for f in _read_db(tree, "etc/group"):
                if len(f) >= 3 and f[0] == gpart and f[2].isdigit():
                    gid = int(f[2])
                    break
            else:
                raise Permanent(f"image {reference}: group {gpart!r} (from the image's User) does not exist "
                                "in the image's /etc/group",
                                "fix the image's USER, or pass --user with a numeric uid:gid")
    return f"{uid}:{gid}"


__all__ = ["BuildProgress", "build_base_disk", "cached_base_disk", "disk_path",
           "inject_guest_init", "resolve_user"]
