"""Named snapshots of a workspace's VM, and what restores and forks them.

A snapshot is a directory ``<root>/workspaces/<name>/snapshots/<tag>/`` (so
``delete`` removes it with the workspace) holding the VMM's files (QEMU: the
device ``state``, the guest ``memory``, the ``disk``) and ``snapshot.json``:
the VMM and its version, the device layout, memory and CPUs, the network
mode, the image, kernel and initramfs digests, the files' fingerprints and
the creation time.  It is staged in a dot directory and published with one
rename, so a crash leaves no half snapshot (the next create under the lock
removes the stage).

A fork of a networked workspace gets a network of its own at boot (a NAT
TAP, lease and rules, or pasta and its namespace, as any start) and guest
init takes the new MAC and addressing in the ``restore`` session
(docs/network.md, "Forks and restores"); its published ports are its own.

A restore refuses a snapshot whose kernel, initramfs or image differ from
what the workspace would boot now, whose files changed since it was taken,
or (in the supervisor) whose VMM version or device layout differ.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microagent.errors import Conflict, InvalidRequest, NotFound, Permanent, Unsupported
from microagent.fsutil import atomic_write, fsync_dir, private_dir
from microagent.paths import workspace_dir
from microagent.vmkit.types import SnapshotSpec, now_rfc3339

SCHEMA_VERSION = 1
MANIFEST_NAME = "snapshot.json"
SNAPSHOTS_DIR = "snapshots"
STAGE_PREFIX = ".stage-"
GENERATION_FILE = ".generation"
#: the files a QEMU snapshot holds: ``state`` is small and hashed, the others are fingerprinted
_HASHED, _FINGERPRINTED = ("state",), ("memory", "disk")
#: absent where the VMM's saved state holds the guest memory (apple-vf, windows-hyperv): then
#: the manifest records no ``memory`` and a restore asks for none
_OPTIONAL = ("memory",)
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_TAG_RULE = "1-63 characters from A-Z a-z 0-9 . _ - starting with a letter or digit"


def check_tag(tag: str) -> str:
    """:raises InvalidRequest: unless ``tag`` is a safe snapshot name."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidRequest(f"snapshot tag {tag!r} is not a safe name", f"use {_TAG_RULE}")
    return tag


def parse_source(spec: str) -> tuple[str, str]:
    """``WORKSPACE:TAG`` (what a fork is made from).

    :raises InvalidRequest: for anything else.
    """
    from microagent.workspace.lifecycle import check_name

    name, sep, tag = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep:
        raise InvalidRequest(f"snapshot {spec!r} must be WORKSPACE:TAG", "e.g. --from-snapshot base:ready")
    return check_name(name), check_tag(tag)


#: backends whose forks of a networked workspace get a network of their own (tested with real guests)
NETWORKED_FORK_BACKENDS = ("qemu",)


def check_fork_network(source: Any, spec: str) -> None:
    """:raises Unsupported: a fork of a networked workspace on a backend not in
    :data:`NETWORKED_FORK_BACKENDS` (firecracker's saved device state names the source's TAP)."""
    if source.network != "isolated" and source.backend not in NETWORKED_FORK_BACKENDS:
        raise Unsupported(f"snapshot {spec} is of a {source.backend} workspace with network {source.network}; "
                          f"forks of networked workspaces are supported on {', '.join(NETWORKED_FORK_BACKENDS)} only",
                          "fork a snapshot of an isolated workspace, or create and start a new one")


def fork_publish(source: Any, publish: Any) -> tuple[Any, ...]:
    """A fork's published ports, parsed and checked against the source's network mode.

    A fork publishes only what it is given: the source's host ports are the source's
    (held by its channel helper), and a second listener on them could not bind.
    :raises InvalidRequest: a bad spec, a duplicate, or any port for an isolated source.
    """
    from microagent.network.publish import check_network, parse_publish

    published = tuple(parse_publish(p) for p in publish)
    check_network(source.network, published)
    return published


def snapshots_root(root: Path, name: str) -> Path:
    return workspace_dir(root, name) / SNAPSHOTS_DIR


def snapshot_dir(root: Path, name: str, tag: str) -> Path:
    return snapshots_root(root, name) / check_tag(tag)


def _fingerprint(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtimeNs": st.st_mtime_ns}


def _sha256(path: Path) -> str:
    from microagent.digests import sha256_file

    return "sha256:" + sha256_file(path)


@dataclass(frozen=True)
class Snapshot:
    """One published snapshot: its directory and its manifest."""

    path: Path
    doc: dict[str, Any]

    @property
    def tag(self) -> str:
        return str(self.doc.get("tag", self.path.name))

    def summary(self) -> dict[str, Any]:
        d = self.doc
        return {"workspace": d.get("workspace"), "tag": self.tag, "createdAt": d.get("createdAt"),
                "vmm": d.get("vmm"), "memoryMiB": d.get("memoryMiB"), "cpuCount": d.get("cpuCount"),
                "network": d.get("network"), "bytes": _disk_usage(self.path), "path": str(self.path)}

    def spec(self, *, private: bool, generation: int) -> SnapshotSpec:
        return SnapshotSpec(path=str(self.path), private=private, vmmVersion=str(self.doc.get("vmmVersion", "")),
                            layout=str(self.doc.get("layout", "")), generation=generation)

    def verify(self, manifest: Any, kernel_sha256: str, initrd: Path) -> None:
        """Refuse a snapshot whose inputs or files changed since it was taken.

        :raises Conflict: a digest or file that differs; :raises NotFound: a file gone.
        """
        d = self.doc
        label = f"snapshot {d.get('workspace')}:{self.tag}"
        if d.get("backend") != manifest.backend:
            raise Unsupported(f"{label} was taken on backend {d.get('backend')}, not {manifest.backend}")
        checks = (("image", d.get("image", {}).get("digest"), manifest.image.digest),
                  ("kernel", d.get("kernel", {}).get("sha256"), kernel_sha256),
                  ("initramfs (guest init)", d.get("initramfs", {}).get("sha256"), _sha256(initrd)))
        for what, then, now in checks:
            if then != now:
                raise Conflict(f"the {what} changed since {label} was taken ({then} then, {now} now)",
                               "take a new snapshot after a cold start")
        self.verify_files(label, "remove it with 'microagent snapshot rm'")

    def verify_files(self, label: str, remedy: str) -> None:
        """:raises NotFound: a file gone; :raises Conflict: one changed since it was recorded."""
        files = self.doc.get("files", {})
        for name in (*_HASHED, *_FINGERPRINTED):
            if name in _OPTIONAL and name not in files:
                continue
            path = self.path / name
            if not path.is_file():
                raise NotFound(f"{label} has no {name} file ({path})", remedy)
            recorded = files.get(name, {})
            now = {"sha256": _sha256(path)} if name in _HASHED else _fingerprint(path)
            if any(recorded.get(k) != v for k, v in now.items()):
                raise Conflict(f"the {name} file of {label} changed since it was taken", remedy)


def _disk_usage(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.iterdir() if p.is_file())


def load(root: Path, name: str, tag: str) -> Snapshot:
    """:raises NotFound: when ``name`` has no snapshot ``tag``."""
    path = snapshot_dir(root, name, tag)
    try:
        doc = json.loads((path / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        raise NotFound(f"workspace {name} has no snapshot {tag}",
                       f"list them with 'microagent snapshot ls {name}'") from None
    except (OSError, ValueError) as exc:
        raise Permanent(f"snapshot {name}:{tag} has an unreadable manifest: {exc}",
                        f"remove it with 'microagent snapshot rm {name} {tag}'") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != SCHEMA_VERSION:
        raise Permanent(f"snapshot {name}:{tag} has a manifest this version does not read",
                        f"remove it with 'microagent snapshot rm {name} {tag}'")
    return Snapshot(path, doc)


def list_snapshots(root: Path, name: str) -> list[Snapshot]:
    """``name``'s published snapshots, oldest first (unreadable ones skipped)."""
    base = snapshots_root(root, name)
    if not base.is_dir():
        return []
    found = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(".") or not _TAG.fullmatch(entry.name):
            continue
        try:
            found.append(load(root, name, entry.name))
        except (NotFound, Permanent):
            continue
    return sorted(found, key=lambda s: str(s.doc.get("createdAt", "")))


def stage(root: Path, name: str, tag: str) -> Path:
    """A fresh private staging directory; stale stages (crashed creates) go first.

    Called under the workspace lock, so every stage found is stale.
    :raises Conflict: when ``tag`` exists already.
    """
    base = private_dir(snapshots_root(root, name))
    for old in base.glob(f"{STAGE_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)
    if (base / tag).exists():
        raise Conflict(f"workspace {name} already has a snapshot {tag}",
                       f"pick another tag, or remove it with 'microagent snapshot rm {name} {tag}'")
    path = base / f"{STAGE_PREFIX}{tag}-{os.urandom(4).hex()}"
    path.mkdir(mode=0o700)
    return path


def file_records(staged: Path) -> dict[str, Any]:
    """What :meth:`Snapshot.verify_files` checks later: the state's sha256, the others' size and mtime."""
    return {**{n: {"sha256": _sha256(staged / n)} for n in _HASHED},
            **{n: _fingerprint(staged / n) for n in _FINGERPRINTED
               if n not in _OPTIONAL or (staged / n).exists()}}


def publish(staged: Path, manifest: Any, tag: str, vmm: dict[str, Any], runtime_config: dict[str, Any]) -> Snapshot:
    """Write ``snapshot.json`` into the stage and rename it to its tag."""
    for name in os.listdir(staged):
        os.chmod(staged / name, 0o600)
    doc = {
        "schemaVersion": SCHEMA_VERSION, "workspace": manifest.name, "tag": tag, "createdAt": now_rfc3339(),
        "backend": manifest.backend, "vmm": vmm.get("vmm"), "vmmVersion": vmm.get("vmmVersion"),
        "layout": vmm.get("layout"), "memoryMiB": manifest.memoryMiB, "cpuCount": manifest.cpuCount,
        "network": manifest.network,
        "image": {"ref": manifest.image.ref, "digest": manifest.image.digest},
        "kernel": {"path": manifest.verification.kernel.path, "sha256": manifest.verification.kernel.sha256},
        "initramfs": {"path": runtime_config.get("initrdPath", ""),
                      "sha256": _sha256(Path(str(runtime_config.get("initrdPath", ""))))},
        "files": file_records(staged),
    }
    atomic_write(staged / MANIFEST_NAME, json.dumps(doc, indent=2).encode() + b"\n")
    final = staged.parent / tag
    os.rename(staged, final)
    fsync_dir(staged.parent)
    return Snapshot(final, doc)


def remove(root: Path, name: str, tag: str) -> bool:
    """Remove one snapshot (renamed aside first, so a crash leaves a stage, not half of it)."""
    path = snapshot_dir(root, name, tag)
    if not path.exists():
        return False
    aside = path.with_name(f"{STAGE_PREFIX}rm-{tag}-{os.urandom(4).hex()}")
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)
    return True


def next_generation(root: Path, name: str) -> int:
    """The restore generation of ``name``'s next restore (called under its lock)."""
    path = private_dir(snapshots_root(root, name)) / GENERATION_FILE
    try:
        current = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        current = 0
    atomic_write(path, f"{current + 1}\n".encode())
    return current + 1
