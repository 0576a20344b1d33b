"""stats' host-side readings against real processes and real /proc (no VM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from microagent.host.process import ref_for
from microagent.workspace.stats import network_usage, process_usage


def test_process_usage_reads_cpu_and_memory_of_a_live_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "x = b\"\\1\" * (64 << 20); sum(range(3_000_000)); "
                              "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        ref = ref_for(child.pid)
        for _ in range(100):
            usage = process_usage(child.pid, ref.starttime)
            assert usage is not None
            if usage["rssBytes"] > 64 << 20 and usage["cpuSeconds"] > 0:
                break
            subprocess.run(["sleep", "0.05"])
        assert usage["rssBytes"] > 64 << 20 and usage["pssBytes"] > 0 and usage["cpuSeconds"] > 0
        assert process_usage(child.pid, ref.starttime + 1) is None  # a recycled PID is not ours
    finally:
        child.kill()
        child.wait()
    assert process_usage(child.pid, ref.starttime) is None


def test_network_usage_reads_the_taps_counters_from_the_vmms_namespace(tmp_path: Path) -> None:
    # lo stands in for the TAP: the reading is /proc/<pid>/net/dev of the VMM's namespace
    (tmp_path / "network.json").write_text(json.dumps({"mode": "nat", "tap": "lo"}))
    usage = network_usage(tmp_path, os.getpid())
    assert usage is not None and usage["interface"] == "lo"
    assert usage["guestRxBytes"] >= 0 and usage["guestTxBytes"] >= 0
    (tmp_path / "network.json").write_text(json.dumps({"mode": "nat", "tap": "no-such-tap"}))
    assert network_usage(tmp_path, os.getpid()) is None
    (tmp_path / "network.json").write_text(json.dumps({"mode": "isolated"}))
    assert network_usage(tmp_path, os.getpid()) is None
