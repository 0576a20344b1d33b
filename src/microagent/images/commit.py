"""A workspace's root disk as an OCI image: ``microagent commit`` (docs/commit.md).

Owns turning an ext4 disk into one layer and an image around it:

* the layer holds the **changes against the base disk** when the image the
  disk started from is known (its base disk and cached image record): added
  and changed paths, and an OCI whiteout (``.wh.NAME``) for each deleted
  path; otherwise the **whole tree** (a full layer on an empty config);
* paths guest init writes at each boot or that only exist at run time are
  left out (:func:`runtime_only`);
* the layer is **reproducible**: entries sorted by path, each with its own
  mtime (whole seconds), uid, gid and mode from the disk, no user or group
  names, PAX headers, gzip (ISA-L) without a name or timestamp; the config carries
  no timestamp of its own; so the same disk content gives the same digests;
* the image is the base image's config (env, user, workdir, entrypoint,
  cmd) with the layer's ``diff_id`` and a history entry appended, and the base
  image's layers followed by the new one;
* it goes into the image cache (a record under the reference, so ``run REF``
  boots it), an OCI image layout (``oci:PATH[:TAG]``), or a registry
  (:func:`push`, with the registry auth pulls use).

Reading the disk is :mod:`.ext4tree` (debugfs; the disk is guest-written and
hostile); blobs go through :mod:`.blobs` (verified), records through :mod:`.store`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from microagent.errors import InvalidRequest, Permanent, ResourceExhausted, Unsupported
from microagent.fsutil import atomic_write, atomic_writer, private_dir
from microagent.images import store as index
from microagent.images.blobs import BlobStore, digest_of
from microagent.images.ext4tree import Node, dump_files, read_tree
from microagent.images.limits import Limits, resolve
from microagent.images.manifest import (
    DOCKER_LAYER_GZIP,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    parse_config,
)
from microagent.images.model import ImageConfig, Platform
from microagent.images.reference import ImageReference, LayoutReference, parse_reference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED_BY = "microagent commit"
#: files guest init rewrites at every boot (guest/net.c) and its own copy (images/rootfs.py)
BOOT_FILES = frozenset({"etc/hosts", "etc/resolv.conf", "sbin/microagent-init", "usr/sbin/microagent-init"})
#: directories whose content exists only while the guest runs (mounts of guest init)
RUNTIME_DIRS = frozenset({"proc", "sys", "dev", "run"})
WHITEOUT = ".wh."


def runtime_only(rel: str, kind: str) -> bool:
    """Paths a commit leaves out: boot-time files, run-time mounts' content, ``lost+found``,
    sockets (a tar cannot carry them)."""
    if rel in BOOT_FILES or rel == "lost+found" or kind == "sock":
        return True
    top, sep, _ = rel.partition("/")
    return bool(sep) and top in RUNTIME_DIRS


@dataclass(frozen=True)
class Base:
    """The image the disk started from, as far as it is known."""

    disk: Path | None = None  # its base disk (same lineage as the workspace's), None: full layer
    config_json: dict[str, Any] | None = None  # the base image's config document
    layers: tuple[tuple[str, str, int], ...] = ()  # (digest, mediaType, size) of its layers
    digest: str = ""


@dataclass
class Built:
    """A committed image whose blobs are all in the local blob store."""

    digest: str
    manifest: bytes
    config: bytes
    layers: tuple[tuple[str, str, int], ...]
    platform: Platform
    layer_digest: str
    diff_id: str
    base_digest: str
    changes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"digest": self.digest, "layer": {"digest": self.layer_digest, "diffId": self.diff_id,
                                                 "size": self.layers[-1][2]},
                "base": self.base_digest or None, "layers": len(self.layers), "changes": self.changes}


# -- the layer -----------------------------------------------------------------------


def diff(base: dict[str, Node] | None, new: dict[str, Node]) -> list[tuple[str, Node | None]]:
    """Sorted ``(path, node)`` for the layer; ``node`` is ``None`` for a whiteout path."""
    out: list[tuple[str, Node | None]] = []
    for rel, node in new.items():
        if rel and (base is None or rel not in base or base[rel].key() != node.key()):
            out.append((rel, node))
    for rel in base or {}:
        if rel in new or not rel:
            continue
        parent, _, leaf = rel.rpartition("/")
        assert base is not None
        # under a deleted or replaced directory the ancestor's own entry covers it
        if parent and not (parent in new and new[parent].kind == "dir" and base[parent].kind == "dir"):
            continue
        out.append((f"{parent}/{WHITEOUT}{leaf}" if parent else f"{WHITEOUT}{leaf}", None))
    return sorted(out, key=lambda item: item[0].encode("utf-8", "surrogateescape"))


class _Hashing:
    """A sink that hashes and counts what passes to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


class _Gzip:
    """gzip by ISA-L at level 2 (about 15x zlib's default here, ~12 % larger): a fixed header
    (no name, mtime 0), and the same bytes for the same input and chunks."""

    def __init__(self, out: _Hashing) -> None:
        from isal import isal_zlib

        self.out = out
        self.c = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)  # wbits 31: the gzip wrapper

    def write(self, data: bytes) -> int:
        self.out.write(self.c.compress(data))
        return len(data)

    def flush(self) -> None:
        pass

    def __enter__(self) -> "_Gzip":
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.write(self.c.flush())


def _info(rel: str, node: Node | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.uname = info.gname = ""
    if node is None:  # whiteout: an empty file, fixed metadata
        info.type, info.mode, info.mtime = tarfile.REGTYPE, 0, 0
        return info
    info.mode, info.uid, info.gid, info.mtime = node.mode, node.uid, node.gid, node.mtime
    info.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
                 "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[node.kind]
    if node.kind == "symlink":
        info.linkname = node.target.decode("utf-8", "surrogateescape")
    elif node.kind in ("chr", "blk"):
        info.devmajor, info.devminor = node.rdev
    elif node.kind == "file":
        info.size = node.size
    return info


def write_layer(disk: Path, base: Base, workdir: Path, store: BlobStore, limits: Limits) -> tuple[str, str, int, dict[str, int]]:
    """Read ``disk`` (and the base disk), write the layer blob into ``store``.

    :returns: ``(blob digest, diff_id, blob size, counts of added/changed/deleted)``.
    :raises Permanent: a hostile disk (:mod:`.ext4tree`), a path no layer can hold.
    :raises ResourceExhausted: over the entries or extracted-bytes limit.
    """
    new = read_tree(disk, private_dir(workdir / "new"), max_entries=limits.entries, skip=runtime_only)
    old = (read_tree(base.disk, private_dir(workdir / "base"), max_entries=limits.entries, skip=runtime_only)
           if base.disk is not None else None)
    for rel in new:
        if rel.rpartition("/")[2].startswith(WHITEOUT):
            raise Permanent(f"/{rel} on the disk has a name OCI layers reserve for whiteouts ({WHITEOUT}*)",
                            "rename or remove it in the guest and commit again", entry=f"/{rel}")
    entries = diff(old, new)
    first_path: dict[int, str] = {}  # inode -> the path that carries its data in this layer
    wanted: dict[int, int] = {}
    for rel, node in entries:
        if node is not None and node.kind == "file" and node.ino not in first_path:
            first_path[node.ino] = rel
            wanted[node.ino] = node.size
    total = sum(wanted.values())
    if total > limits.extracted_bytes:
        raise limits.exceeded("extracted_bytes", "the files to commit", total)
    data_dir = private_dir(workdir / "data")
    dump_files(disk, workdir, data_dir, sorted(wanted), wanted)
    tmp = workdir / "layer.tar.gz"
    with open(tmp, "wb") as raw:
        compressed = _Hashing(raw)
        with _Gzip(compressed) as gz:
            plain = _Hashing(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                              encoding="utf-8", errors="surrogateescape") as tar:
                for rel, node in entries:
                    info = _info(rel, node)
                    if node is not None and node.kind == "file":
                        if first_path[node.ino] != rel:
                            info.type, info.size, info.linkname = tarfile.LNKTYPE, 0, first_path[node.ino]
                            tar.addfile(info)
                            continue
                        with open(data_dir / str(node.ino), "rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        tar.addfile(info)
    digest = "sha256:" + compressed.sha.hexdigest()
    with open(tmp, "rb") as fh:
        store.write_file(digest, fh, size=compressed.size)
    counts = {"added": sum(1 for r, n in entries if n is not None and (old is None or r not in old)),
              "changed": sum(1 for r, n in entries if n is not None and old is not None and r in old),
              "deleted": sum(1 for _, n in entries if n is None)}
    return digest, "sha256:" + plain.sha.hexdigest(), compressed.size, counts


# -- the image -----------------------------------------------------------------------


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def config_without_base(config: ImageConfig, platform: Platform) -> dict[str, Any]:
    """The config of a full-layer commit: what the workspace recorded of its image."""
    cfg: dict[str, Any] = {}
    if config.env:
        cfg["Env"] = list(config.env)
    if config.entrypoint:
        cfg["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        cfg["Cmd"] = list(config.cmd)
    if config.working_dir:
        cfg["WorkingDir"] = config.working_dir
    if config.user:
        cfg["User"] = config.user
    doc: dict[str, Any] = {"architecture": platform.architecture, "os": platform.os, "config": cfg,
                           "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    if platform.variant:
        doc["variant"] = platform.variant
    return doc


def commit_disk(disk: Path, base: Base, state_root: Path, *, platform: Platform,
                fallback_config: ImageConfig = ImageConfig(), comment: str = "",
                limits: Limits | None = None) -> Built:
    """Write ``disk`` as an image whose blobs all end up in the local blob store.

    :param base: the base (:class:`Base`; ``disk=None`` for a full layer).
    :param fallback_config: the config of a full-layer commit (no base config known).
    :raises Permanent: a hostile disk; :raises ResourceExhausted: over a limit or the disk is full.
    """
    limits = resolve(limits)
    store = BlobStore.for_state(state_root)
    tmp_root = private_dir(index.images_root(state_root) / "tmp")
    with index.pull_guard(state_root):  # prune must not collect the blobs before they are recorded
        workdir = Path(tempfile.mkdtemp(prefix="commit-", dir=tmp_root))
        try:
            layer_digest, diff_id, size, counts = write_layer(disk, base, workdir, store, limits)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        doc = json.loads(json.dumps(base.config_json)) if base.config_json else \
            config_without_base(fallback_config, platform)
        rootfs = doc.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), diff_id]
        doc["history"] = [*(doc.get("history") or []), {"created_by": CREATED_BY, **({"comment": comment} if comment else {})}]
        config = _canonical(doc)
        config_digest = store.put_bytes(config)
        # OCI and Docker gzip layers are the same bytes: one OCI manifest names them all
        layers = tuple((d, OCI_LAYER_GZIP if m == DOCKER_LAYER_GZIP else m, s) for d, m, s in base.layers) + \
            ((layer_digest, OCI_LAYER_GZIP, size),)
        manifest = _canonical({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": m, "digest": d, "size": s} for d, m, s in layers],
        })
        digest = store.put_bytes(manifest)
        for d, _, s in layers:
            if not store.has(d, s):
                raise Permanent(f"layer {d} of the base image is no longer in the image cache",
                                "pull the base image again ('microagent image pull'), then commit")
    return Built(digest, manifest, config, layers, platform, layer_digest, diff_id, base.digest, counts)


# -- destinations ----------------------------------------------------------------------


def check_destination(ref: str, push: bool) -> ImageReference | LayoutReference:
    """Parse where a commit goes, before any work.

    :raises InvalidRequest: ``builtin:``/``docker-archive:`` destinations, a digest in the
        reference, ``--push`` to an OCI layout.
    """
    try:
        parsed = parse_reference(ref)
    except Permanent as exc:
        raise InvalidRequest(exc.message, exc.remediation) from exc
    if isinstance(parsed, ImageReference):
        if parsed.digest:
            raise InvalidRequest(f"{ref} names a digest; a commit chooses its own",
                                 "give a tag instead, e.g. myimage:v1")
        return parsed
    if isinstance(parsed, LayoutReference):
        if push:
            raise InvalidRequest("--push sends to a registry; an oci: destination is a local directory",
                                 "drop --push, or give a registry reference such as 127.0.0.1:5000/me/img:v1")
        return parsed
    raise InvalidRequest(f"cannot commit to {ref}: only a registry-style name (kept in the image cache, "
                         "sent with --push) or oci:PATH[:TAG] can be written",
                         "use e.g. myimage:v1 or oci:./out:v1")


def record_in_cache(state_root: Path, ref: ImageReference, built: Built) -> None:
    """Make ``ref`` resolve to ``built`` from the image cache (as if it had been pulled)."""
    config, _platform, _ = parse_config(built.config, f"config of {ref}")
    with index.pull_guard(state_root):
        index.record(state_root, index.ImageRecord(
            reference=str(ref), digest=built.digest, platform=built.platform, config=config,
            config_digest=digest_of(built.config), layers=built.layers, source="commit"))


def write_layout(dest: LayoutReference, built: Built, state_root: Path) -> None:
    """Add the image to the OCI image layout at ``dest.path`` (created if missing), tagged
    ``dest.tag`` (default ``latest``); an entry of the same tag is replaced."""
    root = Path(dest.path)
    tag = dest.tag or "latest"
    if root.exists() and not root.is_dir():
        raise InvalidRequest(f"{root} exists and is not a directory", "give a directory for oci:PATH")
    if root.is_dir() and any(root.iterdir()) and not (root / "index.json").is_file():
        raise InvalidRequest(f"{root} is a non-empty directory without an OCI layout in it",
                             "give an empty or new directory, or an existing OCI layout")
    private_dir(root)
    store = BlobStore.for_state(state_root)
    blobs = [digest_of(built.config), built.digest, *(d for d, _, _ in built.layers)]
    for d in blobs:
        target = root / "blobs" / "sha256" / d.split(":", 1)[1]
        if target.is_file() and not target.is_symlink() and target.stat().st_size == store.path(d).stat().st_size:
            continue
        private_dir(target.parent)
        with open(store.path(d), "rb") as src, atomic_writer(target) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    entries: list[dict[str, Any]] = []
    if (root / "index.json").exists():
        from microagent.images.layout import DirectorySource

        with DirectorySource(root).open_file("index.json") as fh:  # a regular file inside, never a FIFO
            text = resolve(None).read_document(fh, f"{root}/index.json")
        try:
            old = json.loads(text)
            entries = [m for m in old.get("manifests", []) if isinstance(m, dict)
                       and (m.get("annotations") or {}).get(REF_NAME) != tag]
        except (ValueError, AttributeError) as exc:
            raise Permanent(f"{root}/index.json is not valid JSON", "give another directory") from exc
    platform = {"architecture": built.platform.architecture, "os": built.platform.os,
                **({"variant": built.platform.variant} if built.platform.variant else {})}
    entries.append({"mediaType": OCI_MANIFEST, "digest": built.digest, "size": len(built.manifest),
                    "platform": platform, "annotations": {REF_NAME: tag}})
    atomic_write(root / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    atomic_write(root / "index.json", _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                  "manifests": entries}))


def push(ref: ImageReference, built: Built, state_root: Path, *, allow_insecure: bool = False) -> int:
    """Send the image to its registry (blobs the registry has are skipped), tag it.

    :returns: the number of blobs uploaded.
    :raises PolicyDenied: credentials missing or refused; :raises Transient: unreachable.
    """
    from microagent.images.registry import client_for

    if ref.tag is None:
        raise Unsupported(f"{ref} has no tag to push to", "give a tag, e.g. NAME:v1")
    client = client_for(ref.registry, ref.api_host, ref.host, state_root=state_root, allow_insecure=allow_insecure)
    store = BlobStore.for_state(state_root)
    sent = 0
    for d in [*(d for d, _, _ in built.layers), digest_of(built.config)]:
        if client.has_blob(ref.repository, d):
            continue
        path = store.path(d)
        if not path.is_file():
            raise ResourceExhausted(f"blob {d} is missing from the image cache", "commit again")
        client.push_blob(ref.repository, d, path)
        sent += 1
    client.put_manifest(ref.repository, ref.tag, built.manifest, OCI_MANIFEST)
    return sent
