"""Build OCI layer blobs, pulled images and OCI layouts for image-pipeline tests.

A fake of the fetch half's output: layers are written as content-addressed
blobs (sha256 of the blob, like a registry) and wrapped in the shared data
model (:class:`~microagent.images.model.Layer`, ``PulledImage``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from microagent.images.model import ImageConfig, Layer, Platform, PulledImage

MEDIA = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
MTIME = 1_700_000_000


@dataclass
class E:
    """One tar entry (``kind``: file dir symlink hardlink char block fifo)."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    link: str = ""
    major: int = 0
    minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    pax: dict[str, str] = field(default_factory=dict)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def tar_bytes(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            default = {"dir": 0o755, "symlink": 0o777}.get(e.kind, 0o644)
            info.mode = default if e.mode is None else e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime  # type: ignore[assignment]
            info.linkname = e.link
            info.devmajor, info.devminor = e.major, e.minor
            pax = dict(e.pax)
            for k, v in e.xattrs.items():
                pax[f"SCHILY.xattr.{k}"] = v.decode("utf-8", "surrogateescape")
            info.pax_headers = pax
            if e.kind == "file":
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
            gz.write(data)
        return out.getvalue()
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


def blob_layer(blobs: Path, blob: bytes, media_type: str) -> Layer:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    blobs.mkdir(parents=True, exist_ok=True)
    path = blobs / digest.split(":")[1]
    path.write_bytes(blob)
    return Layer(digest=digest, media_type=media_type, size=len(blob), path=path)


def layer(blobs: Path, entries: list[E] | bytes, compression: str = "tar") -> Layer:
    raw = entries if isinstance(entries, bytes) else tar_bytes(entries)
    return blob_layer(blobs, compress(raw, compression), MEDIA[compression])


def pulled(layers: list[Layer], config: ImageConfig | None = None, reference: str = "test/image:1") -> PulledImage:
    manifest = json.dumps({"layers": [lay.digest for lay in layers], "config": repr(config)}).encode()
    return PulledImage(reference=reference, digest="sha256:" + hashlib.sha256(manifest).hexdigest(),
                       platform=Platform("amd64"), config=config or ImageConfig(), layers=tuple(layers))


def write_oci_layout(root: Path, layers: list[Layer], config: dict[str, object], tag: str = "latest",
                     architecture: str = "amd64") -> Path:
    """An OCI image layout holding one image made of ``layers`` (blobs copied in)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    diff_ids = []
    for lay in layers:
        data = lay.path.read_bytes()
        (blobs / lay.digest.split(":")[1]).write_bytes(data)
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif data[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard

            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        diff_ids.append("sha256:" + hashlib.sha256(data).hexdigest())

    def put(doc: dict[str, object]) -> tuple[str, int]:
        raw = json.dumps(doc, sort_keys=True).encode()
        digest = hashlib.sha256(raw).hexdigest()
        (blobs / digest).write_bytes(raw)
        return "sha256:" + digest, len(raw)

    cdig, csize = put({"architecture": architecture, "os": "linux", "config": config,
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    mdig, msize = put({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": cdig, "size": csize},
                       "layers": [{"mediaType": lay.media_type, "digest": lay.digest, "size": lay.size}
                                  for lay in layers]})
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig, "size": msize,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return root


def debugfs_stat(image: Path, path: str) -> dict[str, object]:
    """Fields of ``debugfs -R 'stat PATH'``: type, mode, uid, gid, links, times (sec, extra), dev, xattrs."""
    import re
    import subprocess

    quoted = '"' + path.replace('"', '""') + '"'
    proc = subprocess.run(["debugfs", "-R", f"stat {quoted}", str(image)], capture_output=True)
    text = proc.stdout.decode(errors="surrogateescape")
    if not text.startswith("Inode:"):
        raise AssertionError(f"debugfs stat {path}: {proc.stderr.decode(errors='replace')}")
    out: dict[str, object] = {}
    m = re.search(r"Type: (.+?)\s+Mode:\s+(\d+)", text)
    assert m
    out["type"], out["mode"] = m.group(1), int(m.group(2), 8)
    m = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", text)
    assert m
    out["uid"], out["gid"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"Links: (\d+)", text)
    assert m
    out["links"] = int(m.group(1))
    for name in ("ctime", "atime", "mtime", "crtime"):
        m = re.search(rf"^\s*{name}: 0x([0-9a-f]+):([0-9a-f]+)", text, re.M)
        if m:
            out[name] = (int(m.group(1), 16), int(m.group(2), 16))
    m = re.search(r"Device major/minor number: (\d+):(\d+)", text)
    if m:
        out["dev"] = (int(m.group(1)), int(m.group(2)))
    xattrs = {}
    for m in re.finditer(r"^  (\S+) \((\d+)\) = ((?:[0-9a-f]{2} )*)", text, re.M):
        xattrs[m.group(1)] = bytes.fromhex(m.group(3).replace(" ", ""))
    out["xattrs"] = xattrs
    return out
