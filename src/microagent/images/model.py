"""The data that flows through the image pipeline (no I/O).

reference → (pull: registry / OCI layout / docker archive) → :class:`PulledImage`
→ (rootfs: layers extracted, metadata applied, ext4 built) → base disk.
"""

from __future__ import annotations

from pathlib import Path

from msgspec import Struct, field


class Platform(Struct, frozen=True):
    """An OCI platform; ``architecture`` uses OCI spelling (``amd64``, ``arm64``)."""

    architecture: str
    os: str = "linux"
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


class ImageConfig(Struct, frozen=True):
    """What the image's config says about running it (OCI image config subset)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""

    def stop_signal_number(self) -> int:
        """``StopSignal`` as a number (``SIGINT``, ``INT`` or ``2``); SIGTERM when unset or unknown."""
        import signal

        text = self.stop_signal.strip().upper()
        if text.isdigit() and 1 <= int(text) <= 64:
            return int(text)
        name = text if text.startswith("SIG") else f"SIG{text}"
        try:
            return int(signal.Signals[name])
        except KeyError:
            return int(signal.SIGTERM)

    def default_argv(self) -> list[str]:
        """Entrypoint + Cmd, as ``docker run IMAGE`` with no command would run."""
        return [*self.entrypoint, *self.cmd]


class Layer(Struct, frozen=True):
    """One filesystem layer blob, already verified against its digest."""

    digest: str
    media_type: str
    size: int
    path: Path


class PulledImage(Struct, frozen=True):
    """An image whose manifest, config and layers are all in the local blob store."""

    reference: str  # normalised, e.g. docker.io/library/busybox:latest
    digest: str  # manifest digest, sha256:...
    platform: Platform
    config: ImageConfig
    layers: tuple[Layer, ...]
    config_digest: str = ""
    source: str = "registry"  # registry | oci-layout | docker-archive | builtin

    @property
    def resolved(self) -> str:
        """``name@digest``: the immutable form of :attr:`reference`."""
        name = self.reference.rsplit("@", 1)[0]
        if ":" in name.rsplit("/", 1)[-1]:
            name = name.rsplit(":", 1)[0]
        return f"{name}@{self.digest}"


class BaseImage(Struct, frozen=True):
    """A bootable base disk built from an image, plus how to run it."""

    reference: str
    digest: str
    disk: Path
    config: ImageConfig = field(default_factory=ImageConfig)
    platform: Platform | None = None
