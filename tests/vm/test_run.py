"""One-shot runs boot real QEMU guests (about 2 s each under TCG here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from microagent.errors import MicroagentError
from support import vmm_processes

MICROAGENT = str(Path(sys.executable).parent / "microagent")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([MICROAGENT, *args], capture_output=True, timeout=timeout)


def test_uname_runs_in_the_guest_kernel(vm_state: Path) -> None:
    proc = cli("run", "--backend", "qemu", "builtin:busybox", "--", "uname", "-a")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert out.startswith("Linux run-") and "cloud-amd64" in out
    host_release = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    assert host_release not in out  # the guest's own kernel answered, not the host's


def test_an_idle_guest_kernel_stops_its_tick(vm_state: Path) -> None:
    """The TCG CPU model offers ARAT, so the guest's local APIC timer counts as always running:
    its kernel switches to high-resolution one-shot timers and stops the tick when idle
    (a periodic 250 Hz tick cost each idle VMM about 4% of a core, 1.4% without)."""
    proc = cli("run", "builtin:busybox", "--", "sh", "-c", "grep -o arat /proc/cpuinfo; cat /proc/timer_list")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert out.startswith("arat\n")
    assert "hrtimer_interrupt" in out and "tick_handle_periodic" not in out
    assert re.search(r"\.nohz_mode\s*:\s*2", out), out  # NOHZ_MODE_HIGHRES


def test_guest_init_loads_the_drivers_of_the_devices_the_vm_has(vm_state: Path, tmp_path: Path) -> None:
    """The cloud kernel's initramfs carries every virtio driver; guest init loads a driver
    (and what only it uses) when the VM has its device: a module costs a cold boot
    10-50 ms under TCG."""
    def modules(*args: str) -> set[str]:
        proc = cli("run", "--cold", *args, "builtin:busybox", "--", "cut", "-d", " ", "-f1", "/proc/modules")
        assert proc.returncode == 0, proc.stderr.decode()
        return set(proc.stdout.decode().split())

    isolated = modules()
    assert {"virtio_mmio", "virtio_blk", "virtio_console"} <= isolated  # the bus, the disks, the channel
    assert not isolated & {"virtio_net", "failover", "fuse", "virtiofs", "vsock", "vmw_vsock_virtio_transport"}
    (tmp_path / "share").mkdir()
    full = modules("--network", "user", "-v", f"{tmp_path / 'share'}:/mnt")
    assert {"virtio_net", "net_failover", "failover", "virtiofs", "fuse"} <= full
    assert not full & {"vsock", "vmw_vsock_virtio_transport"}  # QEMU attaches no vsock device



def test_the_first_command_finds_the_boot_finished(vm_state: Path) -> None:
    """Guest init answers the host's HELLO before its last boot steps (loopback, /etc/hosts,
    the initramfs freed) and does them while the host reacts; a request is read only after
    them, so even a cold run's first command sees them done."""
    proc = cli("run", "--cold", "builtin:busybox", "--", "sh", "-c",
               "cat /sys/class/net/lo/flags; hostname; cat /etc/hosts")
    assert proc.returncode == 0, proc.stderr.decode()
    flags, name, *hosts = proc.stdout.decode().splitlines()
    assert int(flags, 16) & 0x1, flags  # IFF_UP
    assert f"127.0.1.1 {name}" in hosts and name.startswith("run-"), hosts

def test_streams_go_to_their_fds_and_exit_code_propagates(vm_state: Path) -> None:
    proc = cli("run", "builtin:busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert proc.returncode == 3
    assert proc.stdout == b"out\n"
    assert proc.stderr == b"err\n"


def test_json_reports_the_same(vm_state: Path) -> None:
    proc = cli("run", "--json", "-e", "FOO=bar", "--workdir", "/tmp", "builtin:busybox",
               "sh", "-c", 'echo "$FOO $(pwd) $(hostname)"; echo e >&2; exit 3')
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    result = doc["result"]
    assert doc["backend"] == "qemu" and doc["workspace"].startswith("run-")
    assert result["status"] == "exited" and result["exit_code"] == 3
    assert result["stdout"] == f"bar /tmp {doc['workspace']}\n" and result["stderr"] == "e\n"
    assert result["started_at"].endswith("Z") and result["completed_at"] >= result["started_at"]
    ready = doc["timings"]["restore" if doc["warm"] else "boot"]  # the guest came up one way or the other
    assert ready > 0 and doc["timings"]["total"] >= ready
    assert not (vm_state / "run" / doc["workspace"]).exists(), "one-shot state must be deleted"


def test_missing_command_is_127(vm_state: Path) -> None:
    proc = cli("run", "--json", "builtin:busybox", "--", "no-such-command")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 127
    assert doc["result"]["status"] == "failed_to_start"
    assert "no-such-command" in doc["result"]["error"]["message"]


def test_guest_power_off_mid_exec_is_an_error_not_a_hang(vm_state: Path) -> None:
    proc = cli("run", "--json", "builtin:busybox", "--", "sh", "-c", "echo going; sync; poweroff -f; sleep 60",
               timeout=90)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 125
    assert doc["ok"] is False and doc["error"]["kind"] == "transient"
    assert "channel" in doc["error"]["message"]
    assert vmm_processes(str(vm_state)) == []


def test_boot_timeout_carries_the_serial_tail(vm_state: Path) -> None:
    from microagent.workspace.oneshot import run

    with pytest.raises(MicroagentError) as info:
        run("builtin:busybox", ["true"], boot_timeout=0.3, cold=True)  # a boot, not a restore
    assert info.value.kind == "transient"
    assert "boot timeout" in info.value.message and "serial log tail" in info.value.message
    assert vmm_processes(str(vm_state)) == []
    assert not any(p.name.startswith("run-") for p in vm_state.iterdir())


def test_timeout_kills_the_command(vm_state: Path) -> None:
    proc = cli("run", "--json", "--timeout", "1", "builtin:busybox", "--", "sleep", "30")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 124 and doc["result"]["status"] == "timed_out"
