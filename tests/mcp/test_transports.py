"""``microagent mcp`` as a real process: stdio driven by the SDK's stdio client (with a real
VM boot), and streamable HTTP behind its bearer token."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_support import tool_error

MICROAGENT = str(Path(sys.executable).parent / "microagent")


@pytest.mark.vm
def test_stdio_server_creates_execs_copies_and_deletes(mcp_state: Path) -> None:
    """The whole round trip over stdio; --cleanup removes what the server created and was not deleted."""
    params = StdioServerParameters(command=MICROAGENT, args=["mcp", "--cleanup", "--state-dir", str(mcp_state)])

    async def main() -> None:
        async with Client(params, read_timeout_seconds=180) as c:
            async def call(tool: str, **args: Any) -> Any:
                res = await c.call_tool(tool, args)
                assert not res.is_error, (tool, res.content)
                return res.structured_content

            assert (await call("workspace_create", name="stdio-ws"))["state"] == "running"
            r = await call("workspace_exec", name="stdio-ws", command="uname -s; echo $((6*7))")
            assert (r["exit_code"], r["stdout"]["text"]) == (0, "Linux\n42\n")
            await call("workspace_write_file", name="stdio-ws", path="/root/note", content="kept\n")
            assert (await call("workspace_read_file", name="stdio-ws", path="/root/note"))["content"] == "kept\n"
            assert (await call("workspace_delete", name="stdio-ws"))["deleted"] is True
            err = tool_error(await c.call_tool("workspace_status", {"name": "stdio-ws"}))
            assert err["kind"] == "not_found"
            # left for --cleanup
            assert (await call("workspace_create", name="stdio-left", start=False))["state"] == "prepared"

    anyio.run(main)
    deadline = time.monotonic() + 30
    while (mcp_state / "workspaces" / "stdio-left").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (mcp_state / "workspaces" / "stdio-left").exists(), "--cleanup left a workspace behind"
    assert not (mcp_state / "workspaces" / "stdio-ws").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([MICROAGENT, "mcp", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("the HTTP server did not start listening")


def _status_without_token(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_http_requires_the_bearer_token_and_sigterm_cleans_up(tmp_path: Path, mcp_state: Path) -> None:
    token = "t" * 40
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    port = _free_port()
    proc = _serve(["--http", f"127.0.0.1:{port}", "--token-file", str(token_file), "--state-dir", str(mcp_state),
                   "--cleanup"])
    try:
        _wait_listening(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        assert _status_without_token(url) == 401
        assert _status_without_token(url, "wrong-token-wrong-token") == 401

        async def main() -> None:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
            async with http, Client(streamable_http_client(url, http_client=http)) as c:
                names = {t.name for t in (await c.list_tools()).tools}
                assert "workspace_exec" in names
                res = await c.call_tool("workspace_create", {"name": "http-ws", "start": False})
                assert res.structured_content["state"] == "prepared", res.content

        anyio.run(main)
        assert (mcp_state / "workspaces" / "http-ws").is_dir()
    finally:
        proc.terminate()  # SIGTERM: the server stops and --cleanup deletes what it created
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and token not in err and out == ""
    assert not (mcp_state / "workspaces" / "http-ws").exists()


def test_http_generates_a_token_on_loopback_and_refuses_a_wide_bind_without_one(tmp_path: Path) -> None:
    port = _free_port()
    proc = _serve(["--http", str(port), "--state-dir", str(tmp_path)], env={"MICROAGENT_MCP_TOKEN": ""})
    try:
        _wait_listening(port, proc)
        assert _status_without_token(f"http://127.0.0.1:{port}/mcp") == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "bearer token (generated for this run): " in err

    refused = subprocess.run([MICROAGENT, "mcp", "--http", "0.0.0.0:1"], capture_output=True, text=True,
                             env={**os.environ, "MICROAGENT_MCP_TOKEN": ""}, timeout=60)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "without a chosen token" in refused.stderr and "--token-file" in refused.stderr
    bad = subprocess.run([MICROAGENT, "mcp", "--http", "127.0.0.1:99999"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "port must be a number" in bad.stderr
    short = tmp_path / "short"
    short.write_text("abc")
    bad = subprocess.run([MICROAGENT, "mcp", "--http", "8000", "--token-file", str(short)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "shorter than 16" in bad.stderr


def test_sigterm_on_stdio_cleans_up_and_exits(mcp_state: Path) -> None:
    """A stdio server whose client never closes stdin still honours --cleanup on SIGTERM."""
    proc = subprocess.Popen([MICROAGENT, "mcp", "--cleanup", "--state-dir", str(mcp_state)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin and proc.stdout

    def rpc(msg: dict[str, Any]) -> dict[str, Any] | None:
        assert proc.stdin and proc.stdout
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", **msg}) + "\n")
        proc.stdin.flush()
        if "id" not in msg:
            return None
        while True:
            doc: dict[str, Any] = json.loads(proc.stdout.readline())
            if doc.get("id") == msg["id"]:
                return doc

    try:
        rpc({"id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
        rpc({"method": "notifications/initialized"})
        done = rpc({"id": 2, "method": "tools/call", "params": {
            "name": "workspace_create", "arguments": {"name": "term-ws", "start": False}}})
        assert done and done["result"]["structuredContent"]["state"] == "prepared", done
        assert (mcp_state / "workspaces" / "term-ws").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (mcp_state / "workspaces" / "term-ws").exists()
