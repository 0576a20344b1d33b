"""Guest init's reading of the initramfs's ``modules/conditions`` (guest/boot.c), compiled
with a small C driver that includes boot.c, so its static functions are in reach."""

from __future__ import annotations

import subprocess

import pytest

from agent.conftest import build_guest_driver

DRIVER = r'''
#include "boot.c"
#include <stdio.h>

int main(int argc, char **argv)
{
    /* argv[1]: the conditions text; argv[2]: a module file; argv[3..]: present device IDs */
    bool present[MAX_VIRTIO_ID] = { false };
    for (int i = 3; i < argc; i++)
        present[strtoul(argv[i], NULL, 16)] = true;
    printf("%s\n", module_wanted(argv[1], argv[2], present) ? "load" : "skip");
    return 0;
}
'''


@pytest.fixture(scope="module")
def wanted(tmp_path_factory: pytest.TempPathFactory):
    driver = build_guest_driver(tmp_path_factory.mktemp("conditions"), DRIVER, "boot.c")

    def run(conditions: str, module: str, *present: str) -> str:
        return subprocess.run([str(driver), conditions, module, *present], capture_output=True,
                              text=True, check=True).stdout.strip()
    return run


CONDITIONS = "03-virtio_blk.ko 0x0002\n04-virtio_console.ko 0x0003\n05-failover.ko 0x0001 0x0013\n"


def test_a_module_loads_when_one_of_its_devices_is_present(wanted) -> None:
    assert wanted(CONDITIONS, "05-failover.ko", "0x13") == "load"
    assert wanted(CONDITIONS, "05-failover.ko", "0x1") == "load"
    assert wanted(CONDITIONS, "05-failover.ko", "0x2", "0x3") == "skip"


def test_a_module_without_a_line_always_loads(wanted) -> None:
    assert wanted(CONDITIONS, "02-virtio_mmio.ko") == "load"
    assert wanted("", "00-virtio_ring.ko") == "load"


def test_ids_are_read_within_their_line(wanted) -> None:
    """Regression: the IDs were read with strtoul up to the next line, so "03-virtio_blk.ko"
    on the line after a module's gave it device 0x3, the console every VM has."""
    text = "02-virtio_net.ko 0x0001\n03-virtio_blk.ko 0x0002\n"
    assert wanted(text, "02-virtio_net.ko", "0x3") == "skip"
    assert wanted(text, "02-virtio_net.ko", "0x2", "0x3") == "skip"
    assert wanted(text + "4", "03-virtio_blk.ko", "0x4") == "skip"  # nor past the end of the text


def test_a_name_matches_whole(wanted) -> None:
    assert wanted("05-failover.ko 0x0001\n", "05-failover.ko.xz", "0x2") == "load"  # no line of its own
    assert wanted("05-failover.ko.xz 0x0001\n", "05-failover.ko", "0x2") == "load"
