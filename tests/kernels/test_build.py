"""The kernel build recipe without building: fragment parsing, the cache key, config verification."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from microagent.errors import InvalidRequest
from microagent.kernels import build as kbuild

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "firecracker_slow" / "harness"
SOURCE_SHA = "e849faf31ca3555757f3a8877cb01af92122f744f75d1f3102734651c4e14703"


def test_parse_fragment_reads_values_unset_lines_and_later_lines_win() -> None:
    text = ("# a comment\n\nCONFIG_A=y\nCONFIG_B=16\nCONFIG_C=\"x y\"\n# CONFIG_D is not set\nCONFIG_E=n\n"
            "CONFIG_A=n\n")
    assert kbuild.parse_fragment(text) == {"CONFIG_A": "n", "CONFIG_B": "16", "CONFIG_C": '"x y"',
                                           "CONFIG_D": "n", "CONFIG_E": "n"}


@pytest.mark.parametrize("line", ["VIRTIO=y", "CONFIG_A y", "CONFIG_A-B=y", "  =y"])
def test_parse_fragment_rejects_a_line_that_is_no_option(line: str) -> None:
    with pytest.raises(InvalidRequest, match="line 2"):
        kbuild.parse_fragment(f"CONFIG_OK=y\n{line}\n")


def test_check_config_names_what_olddefconfig_dropped_or_changed() -> None:
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=8\n# comment\n"
    required = {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "16", "CONFIG_D": "y", "CONFIG_E": "n"}
    assert kbuild.check_config(config, required) == [
        "CONFIG_B=y (is: not set)", "CONFIG_C=16 (is: 8)", "CONFIG_D=y (is: not set)"]
    assert kbuild.check_config(config, {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_E": "n"}) == []


def test_the_minimal_fragment_has_what_the_guest_needs() -> None:
    opts = kbuild.MINIMAL.required_options()
    for name in ("VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BLK", "VIRTIO_CONSOLE", "VIRTIO_NET",
                 "VIRTIO_VSOCKETS", "EXT4_FS", "DEVTMPFS", "SERIAL_8250_CONSOLE", "KVM_GUEST", "PVH", "ACPI",
                 "FUSE_FS", "VIRTIO_FS", "UNIX98_PTYS", "POSIX_TIMERS", "FILE_LOCKING", "EPOLL", "SIGNALFD",
                 "TIMERFD", "EVENTFD", "UNIX", "INET", "BLK_DEV_INITRD", "64BIT", "PCI"):
        assert opts.get(f"CONFIG_{name}") == "y", name
    for name in ("MODULES", "RANDOMIZE_BASE", "LEGACY_PTYS"):
        assert opts.get(f"CONFIG_{name}") == "n", name


def _recipe(tmp_path: Path, *, fragment: str = "CONFIG_A=y\n", patch: str | None = None,
            recipe: str = "r/v1") -> kbuild.Recipe:
    frag = tmp_path / "f.fragment"
    frag.write_text(fragment)
    p = None
    if patch is not None:
        p = tmp_path / "p.patch"
        p.write_text(patch)
    return kbuild.Recipe(name="x", fragment=frag, patch=p, recipe=recipe)


def test_the_key_covers_source_fragment_patch_and_recipe(tmp_path: Path) -> None:
    base = kbuild.cache_key(_recipe(tmp_path), SOURCE_SHA)
    assert base == kbuild.cache_key(_recipe(tmp_path), SOURCE_SHA)  # stable
    others = {kbuild.cache_key(_recipe(tmp_path), "0" * 64),
              kbuild.cache_key(_recipe(tmp_path, fragment="CONFIG_A=n\n"), SOURCE_SHA),
              kbuild.cache_key(_recipe(tmp_path, patch="--- a\n"), SOURCE_SHA),
              kbuild.cache_key(_recipe(tmp_path, recipe="r/v2"), SOURCE_SHA)}
    assert base not in others and len(others) == 4


def test_the_slow_lane_key_is_the_harness_formula_of_before_the_move() -> None:
    """The slow-lane kernel moved onto this module; its key (a 6-11 minute rebuild) must not change."""
    sys.path.insert(0, str(HARNESS))
    try:
        import build_kernel
    finally:
        sys.path.remove(str(HARNESS))

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    parts = {"source": SOURCE_SHA, "fragment": sha(HARNESS / "guest-6.12.fragment"),
             "patch": sha(HARNESS / "emulator-workarounds.patch"),
             "recipe": "tinyconfig+fragment+olddefconfig+patch+bzImage/v1"}
    expected = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    assert build_kernel.cache_key(SOURCE_SHA) == expected
    assert build_kernel.RECIPE.reproducible_env()["KBUILD_BUILD_HOST"] == "slow-lane"


def test_a_stale_fragment_is_noticed(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    digest = hashlib.sha256(recipe.fragment.read_bytes()).hexdigest()
    assert not kbuild.stale_fragment({"recipe": "r/v1", "fragmentSha256": digest}, recipe)
    assert kbuild.stale_fragment({"recipe": "r/v1", "fragmentSha256": "0" * 64}, recipe)


def test_kernel_build_refuses_a_backend_it_cannot_serve() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "microagent"), "kernel", "build",
                           "--backend", "apple-vf"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "apple-vf" in proc.stderr
