"""Secrets with real QEMU guests (``--network isolated``, busybox ``wget``).

In a network namespace the test creates (test_egress_vm.Ns: ``allowed.test`` and
``other.test`` name its loopback), record_server.py records the headers it gets, over
HTTP on 8001 and HTTPS on 8443 (a certificate from a test CA the helper trusts through
``SSL_CERT_FILE``).  The guest must see placeholders only; the bound upstream the values.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress.test_egress_vm import MICROAGENT, Ns
from egress.upstream import make_tls_certs

HERE = Path(__file__).parent
VALUE = "apikey-" + secrets.token_hex(12)
TOKEN_VALUE = "token-" + secrets.token_hex(12)
WGET = 'wget -q -O- {flags} --header "Authorization: Bearer $API_KEY" --header "X-Token: $TOKEN" "$1" 2>&1; echo "rc=$?"'


class Upstreams:
    def __init__(self, ns: Ns, tmp: Path) -> None:
        certs = tmp / "certs"
        certs.mkdir()
        self.ca, chain, key = make_tls_certs(certs, ["allowed.test"])
        self.log = tmp / "requests.jsonl"
        self.log.touch()
        self.procs = [subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, str(HERE / "record_server.py"),
                                        *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for args in (["8001", str(self.log)], ["8443", str(self.log), str(chain), str(key)])]

    def requests(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(5)


@pytest.fixture
def upstreams(ns: Ns, tmp_path: Path) -> Iterator[Upstreams]:
    up = Upstreams(ns, tmp_path)
    yield up
    up.close()


def _ma(ns: Ns, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return ns.run("env", *(f"{k}={v}" for k, v in env.items()), MICROAGENT, *args)


def _fetch(ns: Ns, name: str, url: str, flags: str = "") -> str:
    proc = ns.ma("exec", name, "--", "sh", "-c", WGET.format(flags=flags), "sh", url)
    return proc.stdout + proc.stderr


def _guest_dump(ns: Ns, name: str) -> bytes:
    """Every regular file of the guest (all mounts but /proc and /sys) and every process's
    environment and command line, as bytes on the host: the value is searched here, never sent in."""
    script = ("cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null; "
              "find / \\( -path /proc -o -path /sys \\) -prune -o -type f -print 2>/dev/null"
              " | while read -r f; do cat \"$f\" 2>/dev/null; done")
    proc = subprocess.run(["ip", "netns", "exec", ns.name, MICROAGENT, "exec", name, "--", "sh", "-c", script],
                          capture_output=True, timeout=300, check=False)
    assert len(proc.stdout) > 100_000, proc.stderr  # it did read the filesystem
    return proc.stdout


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    """Files under ``root`` whose bytes contain any needle (read in overlapping chunks)."""
    hits = []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            with path.open("rb") as f:
                tail = b""
                while chunk := f.read(16 << 20):
                    if any(n in tail + chunk for n in needles):
                        hits.append(str(path))
                        break
                    tail = chunk[-64:]
        except OSError:
            continue
    return hits


def test_the_guest_sees_placeholders_and_only_bound_hosts_get_values(vm_state: Path, ns: Ns, upstreams: Upstreams,
                                                                    tmp_path: Path) -> None:
    name = f"sec{uuid.uuid4().hex[:6]}"
    token = tmp_path / "token.txt"
    token.write_text(TOKEN_VALUE + "\n")
    env = {"API_KEY": VALUE, "SSL_CERT_FILE": str(upstreams.ca)}
    outputs = []
    try:
        created = _ma(ns, "create", name, "--secret", "API_KEY", "--secret", f"TOKEN=@file:{token}",
                      "--secret-host", "API_KEY=allowed.test", "--secret-host", "TOKEN=allowed.test",
                      "--egress-allow", "other.test", "--egress-allow-cidr", "127.0.0.0/8", "--json", **env)
        assert created.returncode == 0, created.stderr
        wire = json.loads(created.stdout)["workspace"]["network"]["egress"]
        assert [(s["name"], s["source"], s["hosts"]) for s in wire["secrets"]] == [
            ("API_KEY", "env:API_KEY", ["allowed.test"]), ("TOKEN", f"file:{token}", ["allowed.test"])]
        started = _ma(ns, "start", name, **env)
        assert started.returncode == 0, started.stderr
        status = ns.ma("status", name, "--json")
        assert [s["name"] for s in json.loads(status.stdout)["network"]["egress"]["secrets"]] == ["API_KEY", "TOKEN"]
        text = ns.ma("status", name).stdout
        assert "secret:     API_KEY -> allowed.test (from env:API_KEY)" in text, text
        outputs += [created.stdout, created.stderr, started.stdout, started.stderr, status.stdout, text,
                    ns.ma("inspect", name, "--json").stdout]

        guest_env = dict(line.split("=", 1) for line in ns.ma("exec", name, "--", "env").stdout.splitlines()
                         if "=" in line)
        placeholder = guest_env["API_KEY"]
        assert placeholder == wire["secrets"][0]["placeholder"] and placeholder.startswith("microagent-secret-")
        assert guest_env["TOKEN"] == wire["secrets"][1]["placeholder"]

        # plain HTTP through the proxy: the bound host gets the values in the headers
        out = _fetch(ns, name, "http://allowed.test:8001/plain")
        assert "recorded" in out and "rc=0" in out, out
        # HTTPS through the broker (wget -Y off: straight to the proxy port, as a server)
        out = _fetch(ns, name, "http://127.0.0.1:3128/https/allowed.test:8443/broker", "-Y off")
        assert "recorded" in out and "rc=0" in out, out
        # another host, allowed but not bound: refused, nothing sent
        out = _fetch(ns, name, "http://other.test:8001/leak")
        assert "403" in out and "rc=1" in out, out
        seen = upstreams.requests()
        assert [r["path"] for r in seen] == ["/plain", "/broker"], seen
        for r in seen:
            headers = r["headers"]
            assert headers["Authorization"] == f"Bearer {VALUE}" and headers["X-Token"] == TOKEN_VALUE, r
        assert seen[1]["headers"]["Host"] == "allowed.test:8443"

        records = [json.loads(line) for line in ns.ma("egress", "log", name, "--json").stdout.splitlines()]
        assert [(r["host"], r["decision"], r.get("secrets")) for r in records] == [
            ("allowed.test", "allowed", ["API_KEY", "TOKEN"]), ("allowed.test", "allowed", ["API_KEY", "TOKEN"]),
            ("other.test", "refused", None)], records
        assert "not bound to other.test" in records[2]["reason"]

        # the values are nowhere in the guest: files, environments, command lines
        dump = _guest_dump(ns, name)
        assert placeholder.encode() in dump  # the search sees environments
        assert VALUE.encode() not in dump and TOKEN_VALUE.encode() not in dump

        # a helper started again (its predecessor killed) has no values: refused, saying why
        runtime = json.loads((_runtime_dir(vm_state, name) / "runtime.json").read_text())
        os.kill(int(runtime["routerPid"]), signal.SIGKILL)
        time.sleep(0.5)
        assert ns.ma("status", name).returncode == 0  # observes the dead helper: a new one takes over
        started_at = time.monotonic()
        out = _fetch(ns, name, "http://allowed.test:8001/after-restart")
        assert "403" in out and "rc=1" in out, out
        assert time.monotonic() - started_at < 60
        records = [json.loads(line) for line in ns.ma("egress", "log", name, "--json").stdout.splitlines()]
        assert "no value for secret" in records[-1]["reason"], records[-1]
        # `egress set --secret` hands them over again (same names: same placeholders)
        again = _ma(ns, "egress", "set", name, "--secret", "API_KEY", "--secret", f"TOKEN=@file:{token}",
                    "--secret-host", "API_KEY=allowed.test", "--secret-host", "TOKEN=allowed.test", "--json", **env)
        assert again.returncode == 0 and json.loads(again.stdout)["applied"] is True, again.stderr
        outputs += [again.stdout, again.stderr]
        assert json.loads(again.stdout)["egress"]["secrets"][0]["placeholder"] == placeholder
        assert json.loads(again.stdout)["egress"]["allowHosts"] == ["other.test"]  # only secrets given: kept
        kept = ns.ma("egress", "set", name, "--egress-allow", "other.test", "--egress-allow-cidr", "127.0.0.0/8",
                     "--json")
        assert [s["name"] for s in json.loads(kept.stdout)["egress"]["secrets"]] == ["API_KEY", "TOKEN"], kept.stderr
        out = _fetch(ns, name, "http://allowed.test:8001/resupplied")
        assert "recorded" in out and "rc=0" in out, out
        assert upstreams.requests()[-1]["headers"]["Authorization"] == f"Bearer {VALUE}"
        outputs.append(ns.ma("egress", "log", name).stdout)
    finally:
        ns.ma("kill", name)
        ns.ma("delete", name, "-f")
    # nor in any file of the state directory (manifest, runtime files, logs, disks) or any output
    assert _files_holding(vm_state, [VALUE.encode(), TOKEN_VALUE.encode()]) == []
    assert not any(VALUE in o or TOKEN_VALUE in o for o in outputs)


def _runtime_dir(root: Path, name: str) -> Path:
    from microagent.runtime_state import locate_runtime_dir

    return Path(locate_runtime_dir(root, name))


def test_run_with_a_secret_and_bad_secret_input_before_boot(vm_state: Path, ns: Ns, upstreams: Upstreams) -> None:
    proc = _ma(ns, "run", "--secret", "API_KEY", "--secret", "TOKEN=@env:OTHER_VAR",
               "--secret-host", "API_KEY=allowed.test", "--secret-host", "TOKEN=allowed.test",
               "--egress-allow-cidr", "127.0.0.0/8", "builtin:busybox", "--", "sh", "-c", WGET.format(flags=""),
               "sh", "http://allowed.test:8001/run", API_KEY=VALUE, OTHER_VAR=TOKEN_VALUE)
    assert proc.returncode == 0 and "recorded" in proc.stdout, proc.stdout + proc.stderr
    assert VALUE not in proc.stdout + proc.stderr
    [seen] = upstreams.requests()
    assert seen["headers"]["Authorization"] == f"Bearer {VALUE}" and seen["headers"]["X-Token"] == TOKEN_VALUE

    host = ("--secret-host", "S=allowed.test")
    for args, message in (
            (("--secret", "S", *host), "the environment variable S is not set"),
            (("--secret", "S=@file:/nonexistent/key", *host), "/nonexistent/key is not a regular file"),
            (("--secret", "S=@file:/root", *host), "is not a regular file"),
            (host, "names no --secret S"),
            (("--secret", "API_KEY"), "bound to no host"),
            (("--secret", "S=the-value-itself", *host), "must be @env:VAR or @file:PATH"),
            (("--network", "user", "--secret", "API_KEY", "--secret-host", "API_KEY=a.test"),
             "cannot be used with --network user")):
        proc = _ma(ns, "run", *args, "builtin:busybox", "true", API_KEY=VALUE)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "the-value-itself" not in proc.stderr
    created = _ma(ns, "create", "secbad", "--secret", "S", *host)
    assert created.returncode == 2 and "S is not set" in created.stderr, created.stderr
    assert ns.ma("status", "secbad").returncode != 0  # nothing was created
