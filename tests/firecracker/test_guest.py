"""Guest-side checks through Firecracker: they need hardware KVM.

On our PVM hosts (docs/architecture.md, "Facts about our hosts") a Firecracker
guest cannot boot, so every test here skips with the reason (shown by ``-ra``
and in the terminal summary).
Where hardware KVM exists they boot the built-in busybox image with
``readiness: "guest"`` and talk to guest init over vsock through the helper.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from microagent.paths import host_arch


@pytest.fixture
def guest_fc(fc, kvm):
    hardware, detail = kvm
    if not hardware:
        pytest.skip(f"firecracker guest boot needs hardware KVM; this host has none ({detail})")
    from microagent.guestinit import find_guest_init
    from microagent.images.resolve import resolve_image

    image = resolve_image("builtin:busybox", fc.state, find_guest_init(host_arch()))
    disk = fc.state / "workspaces" / "ws" / "rootfs.ext4"
    disk.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image.disk, disk)
    fc.rootfs = disk
    fc.env["MICROAGENT_FIRECRACKER_ALLOW_NO_KVM"] = "0"  # a hardware host needs no escape hatch
    return fc


def _exec(control: Path, argv: list[str]):
    from microagent.channel import ExecRequest, open_channel
    from microagent.channel.exec import run

    with open_channel(control, hello_timeout=10.0) as conn:
        return run(conn, ExecRequest(argv=argv))


def test_start_exec_halt(guest_fc) -> None:
    fc = guest_fc
    doc = fc.ok("start", readiness="guest", memoryMiB=256, timeoutSeconds=60.0)
    assert doc["event"]["state"] == "running" and doc["readiness"]["guestReady"]["ready"] is True
    control = fc.runtime_dir() / "control.sock"
    result = _exec(control, ["sh", "-c", "uname -r; hostname; cat /proc/cmdline"])
    assert result.exit_code == 0
    out = result.stdout.decode()
    assert "cloud-amd64" in out and "\nws\n" in out and "microagent.channel=vsock:1024" in out
    runtime = fc.runtime()
    doc = fc.ok("halt")
    assert doc["event"]["state"] == "halted"
    assert not Path(f"/proc/{runtime['pid']}").exists() or fc.ok("inspect")["runtime"]["alive"] is False


def test_quarantine_cuts_the_channel(guest_fc) -> None:
    from microagent.errors import MicroagentError

    fc = guest_fc
    fc.ok("start", readiness="guest", memoryMiB=256, timeoutSeconds=60.0)
    control = fc.runtime_dir() / "control.sock"
    assert _exec(control, ["true"]).exit_code == 0
    fc.ok("quarantine")
    with pytest.raises(MicroagentError):
        _exec(control, ["true"])
    assert fc.ok("inspect")["runtime"]["alive"] is True
    fc.ok("kill")


def test_run_one_shot(guest_fc) -> None:
    fc = guest_fc
    doc = fc.ok("run", readiness="guest", memoryMiB=256, timeoutSeconds=60.0,
                exec_spec={"argv": ["sh", "-c", "echo hi; exit 3"]})
    assert doc["event"]["state"] == "stopped"
    assert doc["result"]["exit_code"] == 3 and doc["result"]["stdout"] == "hi\n"
