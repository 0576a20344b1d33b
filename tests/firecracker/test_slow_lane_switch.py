"""The test-only slow-lane switch (``MICROAGENT_TEST_FIRECRACKER_SLOW_LANE``): parsing and what it adds.

The boot itself is ``tests/firecracker_slow/``; here, the switch's contract:
a bad value is refused with the remedy, a good one adds the CPU template and
the boot arguments, and without it nothing changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microagent.errors import InvalidRequest
from microagent.supervisors.firecracker.config import firecracker_config
from microagent.supervisors.firecracker.slow_lane import ENV, SlowLane, slow_lane
from microagent.vmkit.types import Config


def _lane_file(tmp_path: Path, **overrides: object) -> Path:
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF")
    (tmp_path / "cpu.json").write_text("{}")
    doc: dict[str, object] = {"kernel": str(tmp_path / "vmlinux"), "cpuTemplate": str(tmp_path / "cpu.json"),
                              "bootArgs": "clearcpuid=xsave,smap,popcnt"}
    doc.update(overrides)
    path = tmp_path / "slow-lane.json"
    path.write_text(json.dumps(doc))
    return path


def test_unset_means_no_lane() -> None:
    assert slow_lane({}) is None and slow_lane({ENV: ""}) is None


def test_a_valid_file_is_read(tmp_path: Path) -> None:
    path = _lane_file(tmp_path)
    lane = slow_lane({ENV: str(path)})
    assert lane == SlowLane(str(path), str(tmp_path / "vmlinux"), str(tmp_path / "cpu.json"),
                            "clearcpuid=xsave,smap,popcnt")


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"cpuTemplate": "relative.json"}, "'cpuTemplate' must be the absolute path"),
    ({"cpuTemplate": "/no/such/template.json"}, "'cpuTemplate' must be the absolute path"),
    ({"kernel": None}, "'kernel' must be the absolute path"),
    ({"bootArgs": "console=ttyS0; rm -rf /"}, "'bootArgs' must be plain kernel arguments"),
    ({"bootArgs": 3}, "'bootArgs' must be plain kernel arguments"),
])
def test_bad_files_are_refused_with_the_remedy(tmp_path: Path, overrides: dict[str, object], fragment: str) -> None:
    path = _lane_file(tmp_path, **overrides)
    with pytest.raises(InvalidRequest) as info:
        slow_lane({ENV: str(path)})
    assert fragment in info.value.message and ENV in info.value.message
    assert "tests only" in (info.value.remediation or "")


def test_bad_paths_are_refused(tmp_path: Path) -> None:
    for value, fragment in (("slow-lane.json", "not an absolute path"),
                            (str(tmp_path / "missing.json"), "cannot read it"),
                            (str(tmp_path), "cannot read it")):
        with pytest.raises(InvalidRequest, match=fragment):
            slow_lane({ENV: value})
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(InvalidRequest, match="not a JSON object"):
        slow_lane({ENV: str(tmp_path / "list.json")})


def test_the_lane_adds_the_cpu_template_and_boot_args(tmp_path: Path) -> None:
    cfg = Config(stateDir="/s", kernelPath="/k/Image", rootfsPath="/w/rootfs.ext4", initrdPath="/k/i.cpio",
                 kernelArgs="loglevel=7")
    plain = firecracker_config(cfg, "ws")
    assert "cpu-config" not in plain and "clearcpuid" not in plain["boot-source"]["boot_args"]
    lane = slow_lane({ENV: str(_lane_file(tmp_path))})
    doc = firecracker_config(cfg, "ws", lane)
    assert doc["cpu-config"] == str(tmp_path / "cpu.json")
    args = doc["boot-source"]["boot_args"]
    # after the backend's own arguments, before the microagent keys and the user's (which win)
    assert args.startswith("console=ttyS0 reboot=k panic=1 pci=off quiet clearcpuid=xsave,smap,popcnt microagent.")
    assert args.endswith("loglevel=7")
    assert {k: v for k, v in doc.items() if k != "cpu-config"} == {
        **plain, "boot-source": {**plain["boot-source"], "boot_args": args}}


def test_the_supervisor_checks_the_switch_before_anything(fc, kvm, tmp_path: Path) -> None:
    """Through the real supervisor executable: a bad lane is refused (``permanent``) before any file is
    written; a valid one lets ``check`` pass without hardware KVM (and without the process-model switch)."""
    fc.env["MICROAGENT_FIRECRACKER_ALLOW_NO_KVM"] = "0"
    fc.env[ENV] = str(tmp_path / "missing.json")
    for command in ("check", "start"):
        doc = fc.call(command)
        assert doc["error"]["kind"] == "permanent" and ENV in doc["error"]["message"], doc
    assert not (fc.runtime_dir() / "runtime.json").exists()
    (tmp_path / "lane").mkdir()
    fc.env[ENV] = str(_lane_file(tmp_path / "lane"))
    doc = fc.call("check")
    assert doc["ok"] is True, doc
    if not kvm[0]:
        fc.env.pop(ENV)
        assert fc.call("check")["error"]["kind"] == "policy_denied"  # the switch is what let it pass
