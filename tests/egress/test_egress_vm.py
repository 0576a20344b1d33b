"""The egress proxy with real QEMU guests (``--network isolated``, busybox ``wget``).

Everything runs in a network namespace the test creates: its ``/etc/netns``
hosts file makes ``allowed.test`` and ``other.test`` name the namespace's
loopback, where an upstream HTTP server listens.  No packet leaves it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

MICROAGENT = str(Path(sys.executable).parent / "microagent")
PORT = 8000


class Ns:
    def __init__(self) -> None:
        self.name = f"meg-{uuid.uuid4().hex[:8]}"
        self.etc = Path("/etc/netns") / self.name
        self.etc.mkdir(parents=True)
        (self.etc / "hosts").write_text("127.0.0.1 localhost\n127.0.0.1 allowed.test other.test\n")
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-m", "http.server", str(PORT),
             "--bind", "127.0.0.1", "--directory", str(Path(__file__).parent)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run(self, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def ma(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(MICROAGENT, *args)

    def close(self) -> None:
        self.server.kill()
        self.server.wait(5)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)


@pytest.fixture
def ns() -> Iterator[Ns]:
    if os.geteuid() != 0:
        print("SKIP: network namespaces for the upstream server need root")
        pytest.skip("needs root for ip netns")
    n = Ns()
    yield n
    n.close()


# In the guest: fetch a URL through the proxy (the variables guest init set), print status and body.
FETCH = 'wget -q -S -O- "$1" 2>&1; echo "rc=$?"'


def _fetch(ns: Ns, name: str, url: str) -> str:
    proc = ns.ma("exec", name, "--", "sh", "-c", FETCH, "sh", url)
    return proc.stdout + proc.stderr


def test_isolated_workspace_reaches_only_what_its_policy_allows(vm_state: Path, ns: Ns) -> None:
    name = f"eg{uuid.uuid4().hex[:6]}"
    allowed = f"http://allowed.test:{PORT}/conftest.py"
    try:
        created = ns.ma("create", name, "--egress-allow", "allowed.test", "--egress-allow-cidr", "127.0.0.0/8",
                        "--json")
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["workspace"]["network"]["egress"] == {
            "allowHosts": ["allowed.test"], "allowCidrs": ["127.0.0.0/8"]}
        started = ns.ma("start", name)
        assert started.returncode == 0, started.stderr
        status = json.loads(ns.ma("status", name, "--json").stdout)
        assert status["network"]["egress"]["allowHosts"] == ["allowed.test"], status["network"]

        env = ns.ma("exec", name, "--", "env").stdout
        assert "HTTP_PROXY=http://127.0.0.1:3128" in env and "https_proxy=http://127.0.0.1:3128" in env
        assert "NO_PROXY=localhost,127.0.0.1" in env

        out = _fetch(ns, name, allowed)
        assert "HTTP/1.0 200" in out and "agent_binary" in out and "rc=0" in out, out

        out = _fetch(ns, name, f"http://other.test:{PORT}/conftest.py")
        assert "403" in out and "rc=1" in out and "agent_binary" not in out, out

        # The guest has no other way out: no NIC, so a direct connection has no route.
        direct = ns.ma("exec", name, "--", "sh", "-c", "ls /sys/class/net")
        assert direct.stdout.split() == ["lo"], direct.stdout

        # The private range taken away on the running workspace: the next connection is refused.
        changed = ns.ma("egress", "set", name, "--egress-allow", "allowed.test", "--json")
        assert changed.returncode == 0 and json.loads(changed.stdout)["applied"] is True, changed.stderr
        out = _fetch(ns, name, allowed)
        assert "403" in out and "agent_binary" not in out, out

        log = ns.ma("egress", "log", name, "--json")
        records = [json.loads(line) for line in log.stdout.splitlines()]
        assert [(r["host"], r["decision"]) for r in records] == [
            ("allowed.test", "allowed"), ("other.test", "refused"), ("allowed.test", "refused")], records
        assert records[0]["address"] == "127.0.0.1" and records[0]["bytesReceived"] > 0
        assert "non-public range 127.0.0.0/8" in records[2]["reason"]
        text = ns.ma("egress", "log", name).stdout
        assert "REFUSED" in text and "other.test:8000" in text
    finally:
        ns.ma("kill", name)
        ns.ma("delete", name, "-f")


def test_run_with_egress_and_bad_input_before_boot(vm_state: Path, ns: Ns) -> None:
    proc = ns.ma("run", "--egress-allow", ".test", "--egress-allow-cidr", "127.0.0.0/8", "builtin:busybox",
                 "--", "sh", "-c", FETCH, "sh", f"http://allowed.test:{PORT}/conftest.py")
    assert proc.returncode == 0 and "agent_binary" in proc.stdout, proc.stdout + proc.stderr
    for bad, message in ((["--egress-allow", "no spaces.test"], "is not a host name"),
                         (["--egress-allow-cidr", "10.0.0.0/33"], "is not a CIDR"),
                         (["--egress-allow", "allowed.test:0"], "'0' is not a port"),
                         (["--network", "user", "--egress-allow", "a.test"], "cannot be used with --network user")):
        proc = ns.ma("run", *bad, "builtin:busybox", "true")
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
