"""Published ports and network teardown with named workspaces (real QEMU guests).

Everything runs inside a network namespace the test creates; the published
listener is on that namespace's loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

MICROAGENT = str(Path(sys.executable).parent / "microagent")
FETCH = ("import sys, urllib.request; "
         "print(urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/index.html', timeout=10).read().decode())")


class Ns:
    def __init__(self) -> None:
        self.name = f"map-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=timeout)

    def ma(self, *args: str) -> tuple[int, dict]:
        proc = self.run(MICROAGENT, *args, "--json")
        return proc.returncode, json.loads(proc.stdout or "{}")

    def listening(self) -> str:
        return self.run("ss", "-Hltn").stdout


@pytest.fixture
def ns() -> Iterator[Ns]:
    n = Ns()
    yield n
    subprocess.run(["ip", "netns", "delete", n.name], capture_output=True)


def test_publish_serves_the_guest_and_is_exclusive(vm_state: Path, ns: Ns) -> None:
    a, b = f"pa{uuid.uuid4().hex[:6]}", f"pb{uuid.uuid4().hex[:6]}"
    try:
        assert ns.ma("create", a, "--network", "user", "-p", "8088:8080")[0] == 0
        code, doc = ns.ma("start", a)
        assert code == 0, doc
        assert ns.run(MICROAGENT, "exec", a, "--", "sh", "-c",
                      "mkdir -p /www && echo published-ok > /www/index.html && httpd -p 8080 -h /www").returncode == 0
        fetched = ""
        for _ in range(50):
            got = ns.run(sys.executable, "-c", FETCH, "8088")
            if got.returncode == 0:
                fetched = got.stdout
                break
            time.sleep(0.1)
        assert fetched.strip() == "published-ok"

        # a second workspace cannot claim the same host port: refused before its VM exists
        assert ns.ma("create", b, "--network", "user", "-p", "8088:80")[0] == 0
        code, doc = ns.ma("start", b)
        assert code == 1 and doc["error"]["kind"] == "conflict"
        assert "8088" in doc["error"]["message"]
        assert ns.ma("status", b)[1]["state"] in ("prepared", "failed")

        # quarantine severs the listener while the VM keeps running
        code, doc = ns.ma("quarantine", a)
        assert code == 0 and doc["state"] == "quarantined"
        assert ":8088" not in ns.listening()
        status = ns.ma("status", a)[1]
        assert status["state"] == "quarantined" and status["pid"]
        assert ns.ma("kill", a)[0] == 0
    finally:
        ns.ma("delete", "-f", a)
        ns.ma("delete", "-f", b)
    assert ":8088" not in ns.listening()


def test_nat_workspace_teardown_leaves_nothing(vm_state: Path, ns: Ns) -> None:
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    name = f"pn{uuid.uuid4().hex[:6]}"
    try:
        assert ns.ma("create", name, "--network", "nat")[0] == 0
        code, doc = ns.ma("start", name)
        assert code == 0, doc
        assert "mat" in ns.run("ip", "-br", "link").stdout
        assert f"microagent:{name}" in ns.run("nft", "list", "ruleset").stdout
        out = ns.run(MICROAGENT, "exec", name, "--", "ip", "-4", "route").stdout
        assert "default via 10.213." in out
        assert ns.ma("quarantine", name)[0] == 0
        assert "mat" not in ns.run("ip", "-br", "link").stdout
        assert ns.run("nft", "list", "ruleset").stdout.strip() == ""
        assert ns.ma("kill", name)[0] == 0
        assert ns.ma("delete", name)[0] == 0
        leases = json.loads((vm_state / "network" / "leases.json").read_text())
        assert name not in leases
    finally:
        ns.ma("delete", "-f", name)


def test_gc_cleans_up_after_a_crash(vm_state: Path, ns: Ns) -> None:
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    name = f"pg{uuid.uuid4().hex[:6]}"
    try:
        assert ns.ma("create", name, "--network", "nat", "-p", "8099:80")[0] == 0
        assert ns.ma("start", name)[0] == 0
        runtime = json.loads((vm_state / "run" / name / "runtime.json").read_text())
        # the VMM and its helper die while nobody watches
        subprocess.run(["kill", "-9", str(runtime["pid"]), str(runtime["routerPid"])], check=True)
        time.sleep(0.5)
        assert "mat" in ns.run("ip", "-br", "link").stdout  # leftovers until someone looks
        code, doc = ns.ma("gc")
        assert code == 0, doc
        assert {"workspace": name, "state": "failed"} in doc["reconciled"]
        assert "mat" not in ns.run("ip", "-br", "link").stdout
        assert ns.run("nft", "list", "ruleset").stdout.strip() == ""
        assert ":8099" not in ns.listening()
    finally:
        ns.ma("delete", "-f", name)


def test_workspace_survives_its_helper_being_killed(vm_state: Path, ns: Ns) -> None:
    name = f"ph{uuid.uuid4().hex[:6]}"
    try:
        assert ns.ma("create", name, "--network", "user", "-p", "8097:8080")[0] == 0
        assert ns.ma("start", name)[0] == 0
        runtime = json.loads((vm_state / "run" / name / "runtime.json").read_text())
        subprocess.run(["kill", "-9", str(runtime["routerPid"])], check=True)
        # the next command brings up a new helper (published ports included); the VM never stopped
        out = ns.run(MICROAGENT, "exec", name, "--", "sh", "-c",
                     "mkdir -p /www && echo again > /www/index.html && httpd -p 8080 -h /www && echo started")
        assert out.returncode == 0 and out.stdout == "started\n", out.stderr
        assert json.loads((vm_state / "run" / name / "runtime.json").read_text())["pid"] == runtime["pid"]
        got = ""
        for _ in range(50):
            proc = ns.run(sys.executable, "-c", FETCH, "8097")
            if proc.returncode == 0:
                got = proc.stdout
                break
            time.sleep(0.1)
        assert got.strip() == "again"
    finally:
        ns.ma("delete", "-f", name)
