"""Built-in images that need no network: ``builtin:busybox``.

``builtin:busybox`` is an OCI image microagent builds locally, so it goes
through the same pipeline as any pulled image (layers → ext4, guest init
injected there).  It is written as an OCI image layout under
``<state>/images/builtin/busybox-layout/``: one deterministic layer tar
(sorted entries, mtime 0, uid/gid 0, gzip with no timestamp) holding Debian's
static busybox (``busybox-static``), a symlink per applet and minimal
``/etc`` files.  The layout is rewritten only when busybox or
:data:`LAYOUT_VERSION` change (a stamp file records both), so the manifest
digest, and with it the cached base disk, is stable.

For a guest architecture other than the host's (aarch64 on x86_64), busybox
is Debian's ``busybox-static`` for that architecture
(:mod:`microagent.images.foreign_busybox`), in a layout of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path

from msgspec import structs

from microagent.errors import NotFound
from microagent.fsutil import atomic_write, private_dir
from microagent.images.model import BaseImage, PulledImage
from microagent.paths import host_arch

TYPE_CHECKING = False
if TYPE_CHECKING:  # tarfile and gzip only build the layout, once
    import tarfile

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
NAMES = ("busybox",)
LAYOUT_VERSION = 1
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}

ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/profile": "export PS1='\\h:\\w\\$ '\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/os-release": 'NAME="microagent busybox"\nID=busybox\n',
}
DIRS = {"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc": 0o755,
        "proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755, "tmp": 0o1777, "root": 0o700,
        "var": 0o755, "var/tmp": 0o1777, "home": 0o755, "mnt": 0o755}


def find_static_busybox() -> Path:
    """:raises NotFound: when Debian's busybox-static is not installed."""
    for cand in BUSYBOX_CANDIDATES:
        p = Path(cand)
        if p.is_file():
            head = p.read_bytes()[:4096]
            if head.startswith(b"\x7fELF") and b"/lib64/ld-linux" not in head and b"/lib/ld-" not in head:
                return p
    raise NotFound("a static busybox is not installed", "apt-get install busybox-static")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _info(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _list_full(busybox: Path) -> list[str]:
    return subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout.split()


def _foreign_applets(data: bytes) -> list[str]:
    """Install paths for a busybox that cannot run here: names from its applet
    table, directories from the host's busybox (Debian builds every
    architecture from one config), ``bin/`` for names the host lacks."""
    from microagent.images.foreign_busybox import applet_names

    try:
        host_paths = {p.rsplit("/", 1)[-1]: p for p in _list_full(find_static_busybox())}
    except NotFound:
        host_paths = {}
    return [host_paths.get(name, f"bin/{name}") for name in applet_names(data)]


def busybox_layer_tar(busybox: Path, runnable: bool = True) -> bytes:
    """The uncompressed layer: deterministic for the same busybox binary.

    :param runnable: whether ``busybox`` runs on this host (to list its applets).
    """
    import tarfile

    data = busybox.read_bytes()
    applets = _list_full(busybox) if runnable else _foreign_applets(data)
    entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    for d, mode in DIRS.items():
        entries[d] = (_info(d, tarfile.DIRTYPE, mode), None)
    entries["bin/busybox"] = (_info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), data)
    for rel, text in ETC_FILES.items():
        raw = text.encode()
        entries[rel] = (_info(rel, tarfile.REGTYPE, 0o600 if rel == "etc/shadow" else 0o644, len(raw)), raw)
    for applet in applets:
        if applet in ("bin/busybox", "sbin/init", "linuxrc") or applet in entries:
            continue
        parent = applet.rsplit("/", 1)[0]
        if parent not in entries:
            entries[parent] = (_info(parent, tarfile.DIRTYPE, 0o755), None)
        target = "../" * applet.count("/") + "bin/busybox"
        entries[applet] = (_info(applet, tarfile.SYMTYPE, 0o777, linkname=target), None)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(entries):
            info, content = entries[name]
            tf.addfile(info, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    import gzip

    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def layout_dir(state_root: Path, architecture: str | None = None) -> Path:
    """The layout directory; the host architecture's keeps its original name."""
    suffix = "" if (architecture or host_arch()) == host_arch() else f"-{architecture}"
    return Path(state_root) / "images" / "builtin" / f"busybox-layout{suffix}"


def _busybox_for(state_root: Path, architecture: str) -> Path:
    if architecture == host_arch():
        return find_static_busybox()
    from microagent.images.foreign_busybox import foreign_busybox

    return foreign_busybox(private_dir(Path(state_root) / "images" / "builtin"), architecture)


def ensure_busybox_layout(state_root: Path, architecture: str = "x86_64") -> Path:
    """Write (or reuse) the ``builtin:busybox`` OCI image layout; return its directory.

    :raises NotFound: without busybox-static (for a foreign architecture:
        without apt knowing ``busybox-static:<debarch>``).
    """
    busybox = _busybox_for(state_root, architecture)
    layout = layout_dir(state_root, architecture)
    stamp_path = layout / "microagent-stamp.json"
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = {}
    current = stamp.get("version") == LAYOUT_VERSION and (layout / "index.json").is_file()
    st = busybox.stat()
    seen = [st.st_size, st.st_mtime_ns, st.st_ino]  # unchanged: no need to hash 2 MB on every run
    if current and stamp.get("busybox_stat") == seen:
        return layout
    bb_sha = hashlib.sha256(busybox.read_bytes()).hexdigest()
    if current and stamp.get("busybox_sha256") == bb_sha:
        _write_atomic(stamp_path, _canonical({**stamp, "busybox_stat": seen}))
        return layout
    import fcntl

    layout.mkdir(parents=True, exist_ok=True)
    with open(layout.parent / f"{layout.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tar = busybox_layer_tar(busybox, runnable=architecture == host_arch())
        blob = _gzip(tar)
        arch = _OCI_ARCH.get(architecture, architecture)
        config = _canonical({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": [PATH_ENV], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [_sha256(tar)]},
            "history": [{"created_by": f"microagent builtin:busybox v{LAYOUT_VERSION}"}],
        })
        manifest = _canonical({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": _sha256(blob), "size": len(blob)}],
        })
        index = _canonical({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": _sha256(manifest), "size": len(manifest),
                           "platform": {"architecture": arch, "os": "linux"},
                           "annotations": {REF_NAME: "latest"}}],
        })
        for data in (blob, config, manifest):
            path = layout / "blobs" / "sha256" / _sha256(data).split(":", 1)[1]
            if not path.is_file():
                _write_atomic(path, data)
        _write_atomic(layout / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _write_atomic(layout / "index.json", index)
        _write_atomic(stamp_path, _canonical({"busybox_sha256": bb_sha, "busybox_stat": seen,
                                              "version": LAYOUT_VERSION}))
    return layout


def _layout_digest(layout: Path) -> str | None:
    try:
        return json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def busybox_pulled(state_root: Path, architecture: str = "x86_64") -> PulledImage:
    """``builtin:busybox`` as a pulled image (its layout written if needed).

    :raises NotFound: without busybox-static.
    """
    from microagent.images.pull import pull

    layout = ensure_busybox_layout(state_root, architecture)
    ref = f"oci:{layout}:latest"
    try:  # the layout is ours and content-addressed: once indexed, no need to re-read it
        pulled = pull(ref, state_root, architecture=architecture, policy="never")
    except NotFound:
        pulled = None
    if pulled is None or pulled.digest != _layout_digest(layout):  # new, or rewritten for a new busybox
        pulled = pull(ref, state_root, architecture=architecture, policy="always")  # the one pipeline
    return structs.replace(pulled, reference="builtin:busybox", source="builtin")


def busybox_image(state_root: Path, guest_init: Path, architecture: str = "x86_64") -> BaseImage:
    """The ``builtin:busybox`` base disk, built on first use.

    :raises NotFound: without busybox-static, mke2fs or debugfs.
    """
    from microagent.images.rootfs import build_base_disk

    image = busybox_pulled(state_root, architecture)
    return build_base_disk(image, state_root, guest_init, size_bytes=64 * 1024 * 1024)
