"""A real aarch64 guest, emulated by TCG: create → start → exec → cp → publish → halt
→ delete (one boot).  The kernel is Debian's arm64 cloud kernel, the image builtin:busybox
from Debian's arm64 busybox-static, the init cross-built by zig cc."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support_registry import free_port

from microagent.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.vm]

MICROAGENT = str(Path(sys.executable).parent / "microagent")
NAME = "arm1"
PUBLISHED_PORT = free_port()  # on the host's 127.0.0.1, served by the channel helper
BOOT_TIMEOUT = "240"  # TCG emulates every instruction: a boot takes seconds, a busy host more


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([MICROAGENT, *args], capture_output=True, timeout=timeout, check=False)


def cli_json(*args: str, expect: int = 0) -> dict[str, Any]:
    proc = cli(*args, "--json")
    assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@pytest.fixture(scope="module")
def workspace(a64_state: Path) -> Iterator[str]:
    doc = cli_json("create", NAME, "--arch", "aarch64", "--profile", "tiny",
                   "--network", "user", "--publish", f"{PUBLISHED_PORT}:8080")
    assert doc["state"] == "prepared"
    try:
        assert cli_json("start", NAME, "--boot-timeout", BOOT_TIMEOUT)["state"] == "running"
        yield NAME
    finally:
        cli("kill", NAME)
        cli("delete", NAME)


def test_the_guest_is_aarch64(workspace: str, a64_state: Path) -> None:
    proc = cli("exec", workspace, "--", "uname", "-m")
    assert (proc.returncode, proc.stdout) == (0, b"aarch64\n"), proc.stderr
    manifest = json.loads((a64_state / "workspaces" / workspace / "workspace.json").read_text())
    assert "/kernels/qemu/aarch64/" in manifest["verification"]["kernel"]["path"]


def test_cp_both_ways(workspace: str, tmp_path: Path) -> None:
    local = tmp_path / "in.bin"
    local.write_bytes(os.urandom(200_000))
    cli_json("cp", str(local), f"{workspace}:/root/")
    proc = cli("exec", workspace, "--", "md5sum", "/root/in.bin")
    assert proc.returncode == 0 and proc.stdout.split()[0].decode() == hashlib.md5(local.read_bytes()).hexdigest()
    out = tmp_path / "out.bin"
    cli_json("cp", f"{workspace}:/root/in.bin", str(out))
    assert out.read_bytes() == local.read_bytes()


def test_publish_reaches_a_guest_server(workspace: str) -> None:
    proc = cli("exec", workspace, "--", "sh", "-c",
               "mkdir -p /www && echo served-by-aarch64 > /www/index.html && httpd -p 8080 -h /www")
    assert proc.returncode == 0, proc.stderr
    body = b""

    def fetched() -> bool:
        nonlocal body
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PUBLISHED_PORT}/index.html", timeout=10) as resp:
                body = resp.read()
        except OSError:
            return False
        return True

    assert wait_until(fetched, timeout=60, interval=0.2), f"nothing answered on 127.0.0.1:{PUBLISHED_PORT}"
    assert body == b"served-by-aarch64\n"


def test_halt_ends_the_vm(workspace: str) -> None:
    assert cli_json("halt", workspace)["state"] == "halted"
    proc = cli("exec", workspace, "--json", "--", "true")
    assert proc.returncode == 125, proc.stderr
    refused = json.loads(proc.stdout)
    assert refused["error"]["kind"] == "conflict" and "halted" in refused["error"]["message"]
