"""Resource profiles: named defaults for memory, vCPUs and disk size.

=========  ==========  ====  =========================================
profile    memory MiB  cpus  disk MiB
=========  ==========  ====  =========================================
tiny       256         1     512
small      512         2     the image's base disk + 512 MiB headroom
medium     2048        2     8192
large      4096        4     16384
=========  ==========  ====  =========================================

``small`` is the default. Explicit ``--memory``/``--cpus``/``--disk-size``
override the profile's value. A disk smaller than the image's base disk is
refused (the root filesystem would not fit).
"""

from __future__ import annotations

from dataclasses import dataclass

from microagent.errors import InvalidRequest, ResourceExhausted

DEFAULT_PROFILE = "small"


@dataclass(frozen=True)
class Profile:
    """One named resource profile.

    :param disk_size_mib: fixed disk size, or ``None`` for base disk + headroom.
    :param disk_headroom_mib: added to the base disk when ``disk_size_mib`` is ``None``.
    """

    name: str
    memory_mib: int
    cpus: int
    disk_size_mib: int | None = None
    disk_headroom_mib: int = 0


PROFILES: dict[str, Profile] = {
    "tiny": Profile("tiny", 256, 1, 512),
    "small": Profile("small", 512, 2, None, 512),
    "medium": Profile("medium", 2048, 2, 8192),
    "large": Profile("large", 4096, 4, 16384),
}


@dataclass(frozen=True)
class Resources:
    """What a workspace gets (``workspace.json`` ``resources``)."""

    memoryMiB: int
    cpuCount: int
    diskSizeMiB: int

    def to_json(self) -> dict[str, int]:
        return {"memoryMiB": self.memoryMiB, "cpuCount": self.cpuCount, "diskSizeMiB": self.diskSizeMiB}


def get_profile(name: str | None) -> Profile:
    """The profile called ``name`` (``None`` = the default).

    :raises InvalidRequest: for an unknown profile, listing the choices.
    """
    key = DEFAULT_PROFILE if name is None else name
    try:
        return PROFILES[key]
    except KeyError:
        raise InvalidRequest(f"unknown profile {key!r}",
                             f"use one of: {', '.join(PROFILES)}") from None


def check_overrides(memory_mib: int | None, cpus: int | None, disk_size_mib: int | None) -> None:
    """Range-check explicit overrides before anything is built.

    :raises InvalidRequest: for out-of-range values.
    """
    if memory_mib is not None and not 64 <= memory_mib <= 1 << 20:
        raise InvalidRequest(f"memory {memory_mib} MiB is out of range", "use 64..1048576 MiB")
    if cpus is not None and not 1 <= cpus <= 64:
        raise InvalidRequest(f"cpu count {cpus} is out of range", "use 1..64")
    if disk_size_mib is not None and disk_size_mib < 1:
        raise InvalidRequest(f"disk size {disk_size_mib} MiB is out of range", "give a positive size in MiB")


def resolve_resources(profile: Profile, base_disk_mib: int, *, memory_mib: int | None = None,
                      cpus: int | None = None, disk_size_mib: int | None = None) -> Resources:
    """Profile values with explicit overrides applied.

    :param base_disk_mib: size of the image's base disk (rounded up to MiB).
    :raises InvalidRequest: for out-of-range overrides.
    :raises ResourceExhausted: when the disk would be smaller than the base disk.
    """
    check_overrides(memory_mib, cpus, disk_size_mib)
    if disk_size_mib is None:
        disk = profile.disk_size_mib if profile.disk_size_mib is not None else base_disk_mib + profile.disk_headroom_mib
    else:
        disk = disk_size_mib
    if disk < base_disk_mib:
        raise ResourceExhausted(
            f"disk size {disk} MiB is smaller than the image's base disk ({base_disk_mib} MiB)",
            f"pass --disk-size {base_disk_mib} or more",
        )
    return Resources(memoryMiB=memory_mib if memory_mib is not None else profile.memory_mib,
                     cpuCount=cpus if cpus is not None else profile.cpus,
                     diskSizeMiB=disk)
