"""`microagent run` straight from a real registry on 127.0.0.1 (real QEMU guests).

The registry is Debian's docker-registry (CNCF distribution) started here;
the Debian image is debootstrap's minbase, pushed by the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from support_registry import RegistryServer, build_image, busybox_layer, push_debian_image, push_image

MICROAGENT = str(Path(sys.executable).parent / "microagent")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if not shutil.which("docker-registry"):
        pytest.skip("docker-registry is not installed (make install adds it)")
    with RegistryServer(tmp_path_factory.mktemp("vm-registry")) as reg:
        yield reg


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MICROAGENT, "run", *args], capture_output=True, text=True, timeout=300)


def test_debian_from_the_registry_then_from_the_cache(vm_state: Path, registry: RegistryServer) -> None:
    push_debian_image(registry.host)
    ref = f"{registry.host}/test/debian:12"
    first = run(ref, "--", "cat", "/etc/os-release")
    assert first.returncode == 0, first.stderr
    assert 'VERSION_ID="12"' in first.stdout and "Debian GNU/Linux" in first.stdout
    disks = sorted((vm_state / "images" / "disks").glob("*.ext4"))
    built = {d: d.stat().st_mtime_ns for d in disks}
    before = registry.request_count()
    second = run("--json", ref, "--", "sh", "-c", "id -u; stat -c '%U %a' /usr/bin/passwd")
    assert second.returncode == 0, second.stderr
    doc = json.loads(second.stdout)
    assert doc["result"]["stdout"].split("\n")[:2] == ["0", "root 4755"]  # setuid survived the pipeline
    assert registry.request_count() == before  # the second run did no registry traffic
    assert {d: d.stat().st_mtime_ns for d in disks} == built and built  # and no rebuild


def test_no_command_runs_entrypoint_and_cmd(vm_state: Path, registry: RegistryServer) -> None:
    image = build_image([busybox_layer()], config={"Entrypoint": ["/bin/sh", "-c"],
                                                   "Cmd": ["echo from-cmd $GREETING; id -u"],
                                                   "Env": ["PATH=/bin", "GREETING=hello"],
                                                   "WorkingDir": "/tmp", "User": "nobody"})
    push_image(registry.host, "test/cmd", "v1", image)
    proc = run("--json", f"{registry.host}/test/cmd:v1")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0, doc
    assert doc["result"]["stdout"] == "from-cmd hello\n65534\n"
