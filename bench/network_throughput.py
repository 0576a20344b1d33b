"""Benchmark: guest→host TCP throughput through nat, user (slirp and pasta) and --publish.

Runs entirely inside a network namespace this script creates (ip_forward=1
inside it only; a veth with a default route for pasta to copy),
with a counting TCP sink on the namespace's addresses. ``user`` through pasta
is the path firecracker takes, measured here with QEMU
(``MICROAGENT_QEMU_USER_NETWORK=pasta``). For
each path the guest (or the published port) sends SIZE MiB of zeros; the
host side times first byte to EOF. The baseline is the same transfer over
the namespace's loopback, measured in the same run.

Usage (root): python bench/network_throughput.py [--mib 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

MICROAGENT = str(Path(sys.executable).parent / "microagent")

SINK = r"""
import socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(1); print("ready", flush=True)
c, _ = srv.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if t0 is None: t0 = time.perf_counter()
    n += len(b)
print(n, time.perf_counter() - (t0 or time.perf_counter()), flush=True)
"""

SOURCE = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), 30)
t0 = time.perf_counter(); n = 0; chunk = bytes(1 << 16); total = int(sys.argv[3])
if sys.argv[4] == "send":
    while n < total:
        c.sendall(chunk); n += len(chunk)
    c.shutdown(socket.SHUT_WR); c.recv(1)
else:
    while True:
        b = c.recv(1 << 20)
        if not b: break
        n += len(b)
print(n, time.perf_counter() - t0, flush=True)
"""


class Ns:
    def __init__(self) -> None:
        self.name = f"mab-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")
        self.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for cmd in (["link", "add", "mab0", "type", "veth", "peer", "name", "mab1"],
                    ["addr", "add", "198.51.100.1/24", "dev", "mab0"], ["link", "set", "mab0", "up"],
                    ["link", "set", "mab1", "up"], ["route", "add", "default", "via", "198.51.100.2"]):
            self.run("ip", *cmd)

    def enter(self, *argv: str) -> str:
        """Like :meth:`run` but through ``nsenter`` (no private mounts): pasta's namespaces
        must stay visible to the next command."""
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.name}", "--", "env",
                               "MICROAGENT_QEMU_USER_NETWORK=pasta", *argv],
                              capture_output=True, text=True, check=True, timeout=600).stdout

    def run(self, *argv: str, check: bool = True) -> str:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              check=check, timeout=600).stdout

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], stdout=subprocess.PIPE, text=True)

    def sink(self, port: int) -> subprocess.Popen[str]:
        p = self.popen(sys.executable, "-c", SINK, str(port))
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


def result(p: subprocess.Popen[str]) -> float:
    out = p.communicate(timeout=900)[0].split()
    return int(out[0]) / 2**20 / float(out[1])


def guest_send(ns: Ns, name: str, target: str, port: int, mib: int, pasta: bool = False) -> float:
    sink = ns.sink(port)
    (ns.enter if pasta else ns.run)(MICROAGENT, "exec", name, "--", "sh", "-c",
                                     f"dd if=/dev/zero bs=65536 count={mib * 16} 2>/dev/null | nc {target} {port}")
    return result(sink)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=200)
    args = parser.parse_args()
    ns = Ns()
    names = []
    rates: dict[str, float] = {}
    try:
        sink = ns.sink(9000)
        ns.run(sys.executable, "-c", SOURCE, "127.0.0.1", "9000", str(args.mib << 20), "send")
        rates["host loopback (baseline)"] = result(sink)
        for mode in ("nat", "user"):
            name = f"bench-{mode}-{uuid.uuid4().hex[:4]}"
            names.append(name)
            extra = ["-p", "9100:8080"] if mode == "user" else []
            # the guest sends to the host: opted in; slirp (unfiltered) asked for by name
            env = ["env", "MICROAGENT_QEMU_USER_NETWORK=slirp"] if mode == "user" else []
            ns.run(*env, MICROAGENT, "create", name, "--network", mode, "--allow-host-loopback", *extra)
            ns.run(*env, MICROAGENT, "start", name)
            if mode == "nat":
                gw = ns.run(MICROAGENT, "exec", name, "--", "sh", "-c", "ip route | awk '/default/ {print $3}'").strip()
                rates["guest→host via nat"] = guest_send(ns, name, gw, 9001, args.mib)
            else:
                rates["guest→host via user (slirp)"] = guest_send(ns, name, "10.0.2.2", 9002, args.mib)
                ns.run(MICROAGENT, "exec", name, "--", "sh", "-c",
                       f"(dd if=/dev/zero bs=65536 count={args.mib * 16} 2>/dev/null | nc -l -p 8080) "
                       "> /dev/null 2>&1 &")
                time.sleep(0.5)
                out = ns.run(sys.executable, "-c", SOURCE, "127.0.0.1", "9100", "0", "recv").split()
                rates["guest→host via --publish (channel)"] = int(out[0]) / 2**20 / float(out[1])
        name = f"bench-pasta-{uuid.uuid4().hex[:4]}"
        names.append(name)
        ns.enter(MICROAGENT, "create", name, "--network", "user", "--allow-host-loopback")
        ns.enter(MICROAGENT, "start", name)
        rates["guest→host via user (pasta)"] = guest_send(ns, name, "10.0.2.2", 9003, args.mib, pasta=True)
    finally:
        for name in names:
            subprocess.run(["nsenter", f"--net=/run/netns/{ns.name}", "--", MICROAGENT, "delete", "-f", name],
                           capture_output=True)
        ns.close()
    base = rates["host loopback (baseline)"]
    print(f"TCP throughput, {args.mib} MiB per path (MiB/s)")
    for label, rate in rates.items():
        print(f"{label:<40} {rate:>9.1f}   {rate / base:>7.3f}x of loopback")


if __name__ == "__main__":
    main()
