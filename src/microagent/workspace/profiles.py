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

Every entry point (``create``, ``run``, the SDK) checks the same ranges
before it builds anything: :func:`check_overrides` for the values a profile
may be overridden with, :func:`check_host_fit` for what this host can give
(its memory, its CPUs, the size of the state filesystem), so a workspace
that could never boot is refused at create, not at start.
"""

from __future__ import annotations

import os
from pathlib import Path

from msgspec import Struct

from microagent.errors import InvalidRequest, ResourceExhausted

DEFAULT_PROFILE = "small"


class Profile(Struct, frozen=True):
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


class Resources(Struct, frozen=True):
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


MIN_MEMORY_MIB = 64
#: The most vCPUs any backend accepts.
MAX_CPUS = 64
#: ext4 with 4 KiB blocks holds at most 16 TiB.
MAX_DISK_MIB = 16 << 20


def host_memory_mib() -> int:
    """This host's physical memory in MiB (MemTotal): no VM can be given more."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (AttributeError, ValueError, OSError):
        return 1 << 20


def host_cpus() -> int:
    """CPUs this process may run on: no VM gets more vCPUs than that."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check(what: str, value: int | None, low: int, high: int, unit: str = "") -> None:
    if value is not None and not low <= value <= high:
        raise InvalidRequest(f"{what} {value}{unit} is out of range", f"use {low}..{high}{unit}")


def check_overrides(memory_mib: int | None, cpus: int | None, disk_size_mib: int | None) -> None:
    """Range-check explicit overrides against the fixed limits (any host).

    :raises InvalidRequest: for out-of-range values.
    """
    _check("memory", memory_mib, MIN_MEMORY_MIB, 1 << 20, " MiB")
    _check("cpu count", cpus, 1, MAX_CPUS)
    _check("disk size", disk_size_mib, 1, MAX_DISK_MIB, " MiB")


def filesystem_mib(path: Path) -> int:
    """Total size of the filesystem holding ``path`` (its nearest existing ancestor), in MiB."""
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize // 2**20


def check_host_fit(memory_mib: int | None, cpus: int | None, disk_size_mib: int | None = None,
                   state_root: Path | None = None) -> None:
    """Check resources against what this host can give, before anything is built.

    Memory above MemTotal, more vCPUs than usable CPUs, or a (sparse) disk larger
    than the whole state filesystem could never be served: refused here, with the range.

    :raises InvalidRequest: naming the resource and the range this host allows.
    """
    _check("memory", memory_mib, MIN_MEMORY_MIB, max(MIN_MEMORY_MIB, min(1 << 20, host_memory_mib())), " MiB")
    _check("cpu count", cpus, 1, min(MAX_CPUS, host_cpus()))
    disk_max = MAX_DISK_MIB if state_root is None else min(MAX_DISK_MIB, filesystem_mib(state_root))
    _check("disk size", disk_size_mib, 1, disk_max, " MiB")


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
