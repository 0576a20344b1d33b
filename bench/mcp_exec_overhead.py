"""Benchmark: `workspace_exec` through the MCP server vs the same exec through the library.

One workspace is booted once; then the same command (`true`) runs N times
through an in-process MCP client session (tool call: argument validation,
worker thread, a fresh channel connection, result model) and N times through
the workspace library's GuestConnection (one connection kept, as the SDK does),
interleaved, in the same run. The ratio is what the MCP layer adds per call.

Usage: flock /tmp/microagent-vm.lock python bench/mcp_exec_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client

from microagent.mcp_server import ServerOptions, build_server
from microagent.paths import host_arch, kernel_dir, state_root
from microagent.workspace.lifecycle import WorkspaceStore
from microagent.workspace.sessions import GuestConnection


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    runs = ap.parse_args().runs
    root = Path(tempfile.mkdtemp(prefix="mcp-bench-"))
    shutil.copytree(kernel_dir(state_root(None), "qemu", host_arch()), kernel_dir(root, "qemu", host_arch()),
                    ignore=shutil.ignore_patterns("initramfs-*"))
    server, _ = build_server(ServerOptions(state_dir=root))
    store = WorkspaceStore(root)
    mcp_s: list[float] = []
    lib_s: list[float] = []

    async def session() -> None:
        async with Client(server) as client:
            res = await client.call_tool("workspace_create", {"name": "bench"})
            assert not res.is_error, res.content
            with GuestConnection(store, "bench") as conn:
                for _ in range(runs):
                    t = time.perf_counter()
                    res = await client.call_tool("workspace_exec", {"name": "bench", "command": ["true"]})
                    mcp_s.append(time.perf_counter() - t)
                    assert res.structured_content["exit_code"] == 0
                    t = time.perf_counter()
                    assert conn.exec(["true"]).exit_code == 0
                    lib_s.append(time.perf_counter() - t)

    try:
        anyio.run(session)
    finally:
        store.delete("bench", force=True)
        shutil.rmtree(root, ignore_errors=True)
    mcp_med, lib_med = statistics.median(mcp_s), statistics.median(lib_s)
    print(f"exec `true`, {runs} runs each, median:")
    print(f"  library (GuestConnection.exec): {lib_med * 1000:7.1f} ms")
    print(f"  MCP workspace_exec (in-process): {mcp_med * 1000:7.1f} ms")
    print(f"  ratio MCP / library: {mcp_med / lib_med:.2f}x (+{(mcp_med - lib_med) * 1000:.1f} ms per call)")


if __name__ == "__main__":
    main()
