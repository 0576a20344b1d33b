"""``workspace.json``: what a workspace is, written once at create.

Lives at ``<root>/workspaces/<name>/workspace.json`` beside the workspace's
``rootfs.ext4``. It records the image (reference and digest), backend,
profile and resources, the per-boot env, the network mode, the creation
time, and the verification record (path and sha256 of the kernel, the base
root disk and the guest init) that ``status`` recomputes. Runtime facts
(pid, state, sockets) are the supervisor's and live in ``<root>/run/<name>/``.

Writes are atomic (temp file, fsync, rename).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microagent.errors import NotFound, Permanent
from microagent.paths import workspace_dir

if TYPE_CHECKING:  # the wire types (msgspec) load only for publications: exec reads manifests too
    from microagent.vmkit.types import PortForward

SCHEMA_VERSION = 1
MANIFEST_NAME = "workspace.json"


def manifest_path(state_root: Path, name: str) -> Path:
    return workspace_dir(state_root, name) / MANIFEST_NAME


@dataclass(frozen=True)
class FileDigest:
    """A file and the sha256 it had when recorded."""

    path: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}

    @staticmethod
    def of(path: Path) -> "FileDigest":
        """Record ``path`` now.

        :raises NotFound: when the file is missing.
        """
        from microagent.digests import sha256_file

        try:
            return FileDigest(str(path), "sha256:" + sha256_file(path))
        except FileNotFoundError as exc:
            raise NotFound(f"{path} does not exist") from exc
        except OSError as exc:
            raise Permanent(f"cannot read {path}: {exc.strerror}") from exc

    @staticmethod
    def from_json(data: Any) -> "FileDigest":
        data = data if isinstance(data, dict) else {}
        return FileDigest(str(data.get("path", "")), str(data.get("sha256", "")))


@dataclass(frozen=True)
class Verification:
    """What the workspace was built from: kernel, base root disk, guest init."""

    kernel: FileDigest
    rootfsBase: FileDigest
    init: FileDigest

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel.to_json(), "rootfsBase": self.rootfsBase.to_json(),
                "init": self.init.to_json()}

    @staticmethod
    def from_json(data: Any) -> "Verification":
        data = data if isinstance(data, dict) else {}
        return Verification(FileDigest.from_json(data.get("kernel")),
                            FileDigest.from_json(data.get("rootfsBase")),
                            FileDigest.from_json(data.get("init")))

    def items(self) -> list[tuple[str, FileDigest]]:
        return [("kernel", self.kernel), ("rootfsBase", self.rootfsBase), ("init", self.init)]


@dataclass(frozen=True)
class ImageRecord:
    """The image a workspace was created from and the run defaults it carries."""

    ref: str
    digest: str
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    stop_signal: int = 15

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "digest": self.digest,
                "config": {"env": list(self.env), "workdir": self.workdir, "user": self.user,
                           "stopSignal": self.stop_signal}}

    @staticmethod
    def from_json(data: Any) -> "ImageRecord":
        data = data if isinstance(data, dict) else {}
        raw_cfg = data.get("config")
        cfg: dict[str, Any] = raw_cfg if isinstance(raw_cfg, dict) else {}
        return ImageRecord(str(data.get("ref", "")), str(data.get("digest", "")),
                           tuple(str(e) for e in cfg.get("env") or ()),
                           str(cfg.get("workdir") or ""), str(cfg.get("user") or ""),
                           int(cfg.get("stopSignal") or 15))


@dataclass(frozen=True)
class Manifest:
    """The content of ``workspace.json``."""

    name: str
    image: ImageRecord
    backend: str
    profile: str
    memoryMiB: int
    cpuCount: int
    diskSizeMiB: int
    createdAt: str
    verification: Verification
    env: tuple[str, ...] = ()
    network: str = "isolated"
    publish: tuple[PortForward, ...] = ()
    allowHostLoopback: bool = False
    #: the egress allowlist ``{"allowHosts": [...], "allowCidrs": [...]}`` (docs/egress.md), or None
    egress: dict[str, Any] | None = None
    createdBy: str = ""  # who asked for it, when not a person at the CLI (e.g. "mcp")
    #: commands run once, in order, at the first start (docs/services.md)
    setup: tuple[str, ...] = ()
    #: the command guest init runs on every boot ("" = none), and its restart policy
    service: str = ""
    restart: str = "never"
    #: ``-v`` attachments as given, host folders resolved: "VOLUME:/path[:ro]", "/host/dir:/path[:ro]"
    volumes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, int]:
        return {"memoryMiB": self.memoryMiB, "cpuCount": self.cpuCount, "diskSizeMiB": self.diskSizeMiB}

    def to_json(self) -> dict[str, Any]:
        from microagent.vmkit.types import to_wire

        return {
            "schemaVersion": SCHEMA_VERSION,
            "name": self.name,
            "image": self.image.to_json(),
            "backend": self.backend,
            "profile": self.profile,
            "resources": self.resources,
            "env": list(self.env),
            "network": {"mode": self.network, "publish": [to_wire(p) for p in self.publish],
                        **({"allowHostLoopback": True} if self.allowHostLoopback else {}),
                        **({"egress": self.egress} if self.egress is not None else {})},
            "createdAt": self.createdAt,
            "verification": self.verification.to_json(),
            **({"createdBy": self.createdBy} if self.createdBy else {}),
            **({"setup": list(self.setup)} if self.setup else {}),
            **({"service": {"command": self.service, "restart": self.restart}} if self.service else {}),
            **({"volumes": list(self.volumes)} if self.volumes else {}),
            **self.extra,
        }

    @staticmethod
    def from_json(data: Any) -> "Manifest":
        """Decode a ``workspace.json`` document.

        :raises Permanent: when it is not a manifest.
        """
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise Permanent("workspace.json is not a workspace manifest",
                            "delete the workspace and create it again")
        res: dict[str, Any] = data["resources"] if isinstance(data.get("resources"), dict) else {}
        net: dict[str, Any] = data["network"] if isinstance(data.get("network"), dict) else {}
        known = {"schemaVersion", "name", "image", "backend", "profile", "resources", "env",
                 "network", "createdAt", "verification", "createdBy", "setup", "service", "volumes"}
        svc: dict[str, Any] = data["service"] if isinstance(data.get("service"), dict) else {}
        try:
            return Manifest(
                name=data["name"],
                image=ImageRecord.from_json(data.get("image")),
                backend=str(data.get("backend", "")),
                profile=str(data.get("profile", "")),
                memoryMiB=int(res.get("memoryMiB", 512)),
                cpuCount=int(res.get("cpuCount", 1)),
                diskSizeMiB=int(res.get("diskSizeMiB", 0)),
                createdAt=str(data.get("createdAt", "")),
                verification=Verification.from_json(data.get("verification")),
                env=tuple(str(e) for e in data.get("env") or ()),
                network=str(net.get("mode", "isolated")),
                publish=_publish_from_json(net.get("publish")),
                allowHostLoopback=net.get("allowHostLoopback") is True,
                egress=net["egress"] if isinstance(net.get("egress"), dict) else None,
                createdBy=str(data.get("createdBy") or ""),
                setup=tuple(str(c) for c in data.get("setup") or ()),
                service=str(svc.get("command") or ""),
                restart=str(svc.get("restart") or "never"),
                volumes=tuple(str(v) for v in data.get("volumes") or ()),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise Permanent(f"workspace.json of {data.get('name')} is malformed: {exc}",
                            "delete the workspace and create it again") from exc


def _publish_from_json(entries: Any) -> tuple[PortForward, ...]:
    if not entries:
        return ()
    from microagent.vmkit.types import PortForward

    return tuple(PortForward(hostPort=int(p["hostPort"]), guestPort=int(p["guestPort"]),
                             host=str(p.get("host", "127.0.0.1"))) for p in entries)


def save_manifest(state_root: Path, manifest: Manifest, directory: Path | None = None) -> Path:
    """Write ``workspace.json`` atomically; returns its path.

    :param directory: where to write it instead of the workspace's directory
        (a create's staging directory, published later by a rename).
    :raises Permanent: when it cannot be written.
    """
    path = (directory / MANIFEST_NAME) if directory is not None else manifest_path(state_root, manifest.name)
    from microagent.runtime_state import write_json_atomic

    try:
        write_json_atomic(path, manifest.to_json())
    except OSError as exc:
        raise Permanent(f"cannot write {path}: {exc.strerror}") from exc
    return path


def load_manifest(state_root: Path, name: str) -> Manifest:
    """Read a workspace's manifest.

    :raises NotFound: when no workspace of that name exists.
    :raises Permanent: when the manifest is unreadable or malformed.
    """
    path = manifest_path(state_root, name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"workspace {name} does not exist",
                       f"create it with 'microagent create {name}', or see 'microagent list'") from None
    except OSError as exc:
        raise Permanent(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Permanent(f"{path} is not JSON ({exc})", "delete the workspace and create it again") from exc
    return Manifest.from_json(data)


def list_manifests(state_root: Path) -> list[Manifest]:
    """Every workspace with a readable manifest, sorted by name (others are skipped).

    Dot-directories (a create's staging place) are never workspaces.
    """
    base = state_root / "workspaces"
    out = []
    try:
        entries = sorted(base.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.name.startswith(".") and (entry / MANIFEST_NAME).is_file():
            try:
                out.append(load_manifest(state_root, entry.name))
            except (NotFound, Permanent):
                continue
    return out
