"""Built-in images that need no network: ``builtin:busybox``.

``builtin:busybox`` is Debian's static busybox with a symlink per applet,
minimal ``/etc`` files, and guest init at ``/sbin/microagent-init``.  The disk
is cached under ``<state>/images/builtin/`` keyed by the sha256 of its
inputs, so it is rebuilt only when busybox or guest init change.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from microagent.errors import NotFound
from microagent.images.ext4 import build_ext4

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
NAMES = ("busybox",)

ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/profile": "export PS1='\\h:\\w\\$ '\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/os-release": 'NAME="microagent busybox"\nID=busybox\n',
}


@dataclass(frozen=True)
class BuiltinImage:
    name: str
    disk: Path
    digest: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_static_busybox() -> Path:
    """:raises NotFound: when Debian's busybox-static is not installed."""
    for cand in BUSYBOX_CANDIDATES:
        p = Path(cand)
        if p.is_file():
            head = p.read_bytes()[:4096]
            if head.startswith(b"\x7fELF") and b"/lib64/ld-linux" not in head and b"/lib/ld-" not in head:
                return p
    raise NotFound("a static busybox is not installed", "apt-get install busybox-static")


def _stage(tree: Path, busybox: Path, guest_init: Path) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp",
              "root", "var/tmp", "home", "mnt"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "tmp").chmod(0o1777)
    (tree / "var/tmp").chmod(0o1777)
    (tree / "root").chmod(0o700)
    shutil.copy2(busybox, tree / "bin/busybox")
    (tree / "bin/busybox").chmod(0o755)
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in sorted(applets):
        link = tree / applet
        if applet in ("bin/busybox", "sbin/init", "linuxrc") or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = applet.count("/")
        link.symlink_to("../" * depth + "bin/busybox")
    for rel, text in ETC_FILES.items():
        (tree / rel).write_text(text)
    (tree / "etc/shadow").chmod(0o600)
    shutil.copy2(guest_init, tree / "sbin/microagent-init")
    (tree / "sbin/microagent-init").chmod(0o755)


def busybox_image(state_root: Path, guest_init: Path) -> BuiltinImage:
    """The ``builtin:busybox`` base disk, built on first use.

    :raises NotFound: without busybox-static or mke2fs.
    """
    busybox = find_static_busybox()
    digest = hashlib.sha256(
        f"builtin:busybox\0{_sha256(busybox)}\0{_sha256(guest_init)}\0v1".encode()
    ).hexdigest()
    disk = state_root / "images" / "builtin" / f"busybox-{digest[:16]}.ext4"
    if disk.is_file():
        return BuiltinImage("builtin:busybox", disk, f"sha256:{digest}")
    with tempfile.TemporaryDirectory(prefix="microagent-busybox-") as tmp:
        tree = Path(tmp) / "root"
        tree.mkdir()
        _stage(tree, busybox, guest_init)
        build_ext4(tree, disk, key=digest, size_bytes=64 * 1024 * 1024)
    return BuiltinImage("builtin:busybox", disk, f"sha256:{digest}")
