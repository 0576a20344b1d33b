"""Resource profiles and overrides."""

from __future__ import annotations

import pytest

from microagent.errors import InvalidRequest, ResourceExhausted
from microagent.workspace.profiles import PROFILES, get_profile, resolve_resources


def test_profile_table() -> None:
    assert resolve_resources(get_profile("tiny"), 64).to_json() == {"memoryMiB": 256, "cpuCount": 1, "diskSizeMiB": 512}
    assert resolve_resources(get_profile("small"), 64).to_json() == {"memoryMiB": 512, "cpuCount": 2, "diskSizeMiB": 576}
    assert resolve_resources(get_profile("medium"), 64).to_json() == {"memoryMiB": 2048, "cpuCount": 2, "diskSizeMiB": 8192}
    assert resolve_resources(get_profile("large"), 64).to_json() == {"memoryMiB": 4096, "cpuCount": 4, "diskSizeMiB": 16384}
    assert get_profile(None).name == "small"


def test_unknown_profile_lists_choices() -> None:
    with pytest.raises(InvalidRequest) as info:
        get_profile("huge")
    assert "unknown profile 'huge'" in info.value.message
    for name in PROFILES:
        assert name in info.value.remediation


def test_overrides_win() -> None:
    r = resolve_resources(get_profile("tiny"), 64, memory_mib=1024, cpus=3, disk_size_mib=2048)
    assert (r.memoryMiB, r.cpuCount, r.diskSizeMiB) == (1024, 3, 2048)


def test_disk_smaller_than_base_is_refused() -> None:
    with pytest.raises(ResourceExhausted) as info:
        resolve_resources(get_profile("tiny"), 600)
    assert "smaller than the image's base disk (600 MiB)" in info.value.message


@pytest.mark.parametrize("kwargs", [{"memory_mib": 10}, {"cpus": 0}, {"cpus": 65}, {"disk_size_mib": 0}])
def test_out_of_range_overrides(kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidRequest):
        resolve_resources(get_profile("small"), 64, **kwargs)
