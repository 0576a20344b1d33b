"""``microagent kernel build`` through the product path, booted by QEMU (docs/kernels.md).

The build itself is cached in the default state root's cache (``make test``
runs ``make minimal-kernel`` first, so this finds it); the kernel is installed
into a private state root and a workspace with a host folder boots on it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from microagent.kernels import build as kbuild
from microagent.kernels.store import kernel_status
from microagent.paths import host_arch, state_root
from support import as_state_root

MICROAGENT = str(Path(sys.executable).parent / "microagent")
#: `make minimal-kernel`'s cache (read at collection, before a fixture points the state root elsewhere):
#: built once per machine and shared
CACHE = str(state_root(None) / "cache")

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(host_arch() != "x86_64", reason="the minimal kernel recipe builds x86_64 only")]


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MICROAGENT, *args], capture_output=True, text=True, timeout=timeout)


def ok(*args: str, timeout: float = 180) -> str:
    proc = cli(*args, timeout=timeout)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed (run 'make install')")
    root = tmp_path_factory.mktemp("kbuildstate")
    with as_state_root(root):
        yield root


def test_kernel_build_installs_a_recorded_kernel_that_boots_a_workspace(root: Path, tmp_path: Path) -> None:
    cache = CACHE
    # up to a full build (6-11 minutes on 2 cores) when make test's target did not run first
    doc = json.loads(ok("kernel", "build", "--backend", "qemu", "--cache-dir", cache, "--json", timeout=1800))
    assert doc["installed"] is True and doc["modules"] == [] and doc["image_format"] == "vmlinux"
    source = doc["source"]
    pkg = kbuild.source_package(kbuild.MINIMAL)
    assert source["type"] == "build" and source["package"] == "linux-source-6.12"
    assert source["sha256"] == pkg.sha256 and source["version"] == pkg.version
    assert source["fragmentSha256"] == hashlib.sha256(kbuild.MINIMAL.fragment.read_bytes()).hexdigest()
    assert source["key"] == kbuild.cache_key(kbuild.MINIMAL, pkg.sha256 or "")
    image = Path(doc["path"])
    assert hashlib.sha256(image.read_bytes()).hexdigest() == source["vmlinuxSha256"]
    status = kernel_status(root, "qemu", "x86_64")
    assert status["status"] == "installed" and "built" in status["detail"], status
    ok("kernel", "verify", "--backend", "qemu")

    again = json.loads(ok("kernel", "build", "--backend", "qemu", "--cache-dir", cache, "--if-missing", "--json"))
    assert again["installed"] is False
    # one build serves Firecracker too: the same vmlinux, from the cache
    fc = json.loads(ok("kernel", "build", "--backend", "firecracker", "--cache-dir", cache, "--json"))
    assert fc["files"]["Image"]["sha256"] == doc["files"]["Image"]["sha256"] and fc["modules"] == []

    share = tmp_path / "share"
    share.mkdir()
    (share / "from-host.txt").write_text("host\n")
    ok("create", "kb", "--network", "user", "-v", f"{share}:/work")
    try:
        ok("start", "kb")

        def guest(cmd: str) -> subprocess.CompletedProcess[str]:
            return cli("exec", "kb", "--", "sh", "-c", cmd)

        proc = guest("uname -r; uname -v; test -e /proc/modules || echo no-modules")
        assert proc.returncode == 0, proc.stderr
        release, version, modules = proc.stdout.splitlines()
        assert release == doc["version"] and "2026" in version and modules == "no-modules"
        # what the guest init and ordinary programs need: devpts (a pty), virtio-net, virtiofs
        assert guest("cat /work/from-host.txt").stdout == "host\n"
        assert guest("echo guest > /work/from-guest.txt").returncode == 0
        assert (share / "from-guest.txt").read_text() == "guest\n"
        assert " /dev/pts devpts " in guest("cat /proc/mounts").stdout
        assert "eth0" in guest("ls /sys/class/net").stdout  # virtio-net, addressed by the guest init
        assert "inet " in guest("ip -4 addr show eth0 || ifconfig eth0").stdout
        ok("halt", "kb")
    finally:
        cli("delete", "-f", "kb")

    # a kernel built from another fragment than this microagent's is outdated
    meta = image.parent / "kernel.json"
    record = json.loads(meta.read_text())
    record["source"]["fragmentSha256"] = "0" * 64
    meta.write_text(json.dumps(record))
    status = kernel_status(root, "qemu", "x86_64")
    assert status["status"] == "outdated" and "kernel build" in status["detail"], status
    started = time.monotonic()
    again = json.loads(ok("kernel", "build", "--backend", "qemu", "--cache-dir", cache, "--if-missing", "--json"))
    assert again["installed"] is True and time.monotonic() - started < 60  # reinstalled from the cache
    assert kernel_status(root, "qemu", "x86_64")["status"] == "installed"
