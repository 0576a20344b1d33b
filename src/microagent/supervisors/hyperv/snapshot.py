"""Hyper-V snapshots: ``HcsSaveComputeSystem`` and a compute system created from the saved state.

A snapshot directory holds ``state``, the file HCS saves the VM to (device
state and guest memory together), and ``disk``, the raw root disk (the
workspace's ``rootfs.vhd`` without its footer, taken while the vcpus are
stopped), so a fork or an in-place restore starts from it as from any
ext4 seed (the backend converts it to ``rootfs.vhd``).

Save: ``HcsPauseComputeSystem`` when running (HCS saves only a paused
system: ``HCS_E_INVALID_STATE`` otherwise) → ``HcsSaveComputeSystem`` with
:func:`.documents.save_options` → the disk copied → ``HcsResumeComputeSystem``
when it ran, also after a failure.

Restore: ``HcsCreateComputeSystem`` with the same document plus
``VirtualMachine.RestoreState.SaveStateFilePath``, then ``HcsStartComputeSystem``.
The manifest records the Windows build (:meth:`.hcs.HcsApi.host_version`) and
:func:`.documents.device_layout`; a restore refuses either mismatch before
anything is created or the disk replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from microagent.supervisors.hyperv import documents as docs
from microagent.supervisors.hyperv.hcs import HcsApi
from microagent.supervisors.hyperv.system import ComputeSystemHandle

STATE_FILE = "state"
DISK_FILE = "disk"
#: HCS writes the whole guest memory
SAVE_TIMEOUT_S = 300.0
WHY_VERSION = "Hyper-V restores a saved state only on the Windows build that saved it"


def save(hcs: HcsApi, vm: ComputeSystemHandle, dest: Path, vhd: Path, *, resume: bool) -> None:
    """Pause, save the state to ``dest/state``, copy the raw disk; resume when ``resume``."""
    from microagent.images.ext4 import copy_disk
    from microagent.images.vhd import FOOTER_SIZE

    if vm.hcs_state() == "Running":
        vm.pause()
    try:
        hcs.save_compute_system(vm.system_id, json.dumps(docs.save_options(str(dest / STATE_FILE))),
                                SAVE_TIMEOUT_S)
        disk = copy_disk(vhd, dest / DISK_FILE)  # paused: the disk is at rest
        os.truncate(disk, disk.stat().st_size - FOOTER_SIZE)  # the raw disk, as an ext4 seed
    finally:
        if resume:
            vm.resume()
