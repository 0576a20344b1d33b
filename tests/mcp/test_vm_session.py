"""Every guest-facing tool against a real QEMU boot, through an in-process MCP client session.

One workspace walks create (with progress) → exec (argv, shell string, env, cwd,
stdin, timeout, output limit) → write/read (text, binary, limits, errors) →
logs → status → snapshot → fork → halt → start (the disk kept) → delete; a boot that times out;
then `run` boots a throwaway VM.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from mcp_support import tool_error, with_client

from microagent.mcp_server import ServerOptions

pytestmark = pytest.mark.vm


def test_workspace_lifecycle_through_tools(mcp_state: Path) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def body(c: Any, ledger: Any) -> None:
        async def call(tool: str, **args: Any) -> Any:
            res = await c.call_tool(tool, args)
            assert not res.is_error, (tool, res.content)
            return res.structured_content

        created = await c.call_tool("workspace_create", {"name": "mcp-vm", "env": {"WS": "yes"}},
                                    progress_callback=on_progress)
        assert not created.is_error, created.content
        assert created.structured_content["state"] == "running"
        values = [p[0] for p in progress]
        assert values == sorted(values) and values[-1] == 100 and len(set(values)) == len(values)
        assert any("booting" in (p[2] or "") for p in progress)

        r = await call("workspace_exec", name="mcp-vm", command=["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (r["status"], r["exit_code"]) == ("exited", 3)
        assert r["stdout"] == {"text": "out\n", "bytes": 4, "truncated": False}
        assert r["stderr"] == {"text": "err\n", "bytes": 4, "truncated": False}
        r = await call("workspace_exec", name="mcp-vm", command="cd /tmp && pwd && echo $WS $X",
                       env={"X": "1"})
        assert r["stdout"]["text"] == "/tmp\nyes 1\n"
        r = await call("workspace_exec", name="mcp-vm", command=["pwd"], cwd="/etc")
        assert r["stdout"]["text"] == "/etc\n"
        r = await call("workspace_exec", name="mcp-vm", command=["cat"], stdin="from stdin")
        assert r["stdout"]["text"] == "from stdin"
        r = await call("workspace_exec", name="mcp-vm", command=["od", "-An", "-tx1"],
                       stdin_base64=base64.b64encode(b"\x00\xff").decode())
        assert r["stdout"]["text"].split() == ["00", "ff"]
        r = await call("workspace_exec", name="mcp-vm", command=["sleep", "30"], timeout=1)
        assert (r["status"], r["exit_code"]) == ("timed_out", 124)
        r = await call("workspace_exec", name="mcp-vm", command="head -c 100000 /dev/zero | tr '\\0' a",
                       output_limit=1000)
        assert r["stdout"] == {"text": "a" * 1000, "bytes": 100000, "truncated": True}
        r = await call("workspace_exec", name="mcp-vm", command=["/no/such"])
        assert (r["status"], r["exit_code"]) == ("failed_to_start", 127) and r["error"]
        err = tool_error(await c.call_tool("workspace_exec", {"name": "mcp-vm", "command": "cat",
                                                              "stdin": "a", "stdin_base64": "YQ=="}))
        assert err["kind"] == "permanent" and "not both" in err["message"]

        w = await call("workspace_write_file", name="mcp-vm", path="/tmp/d/t.txt", content="héllo\n", mkdirs=True)
        assert w == {"path": "/tmp/d/t.txt", "bytes_written": 7}
        f = await call("workspace_read_file", name="mcp-vm", path="/tmp/d/t.txt")
        assert f == {"path": "/tmp/d/t.txt", "size": 7, "encoding": "utf-8", "content": "héllo\n"}
        blob = bytes(range(256))
        await call("workspace_write_file", name="mcp-vm", path="/tmp/b.bin",
                   content=base64.b64encode(blob).decode(), encoding="base64", mode=0o755)
        f = await call("workspace_read_file", name="mcp-vm", path="/tmp/b.bin")
        assert (f["encoding"], f["size"], base64.b64decode(f["content"])) == ("base64", 256, blob)
        r = await call("workspace_exec", name="mcp-vm", command="stat -c %a /tmp/b.bin")
        assert r["stdout"]["text"] == "755\n"
        err = tool_error(await c.call_tool("workspace_read_file", {"name": "mcp-vm", "path": "/tmp/b.bin",
                                                                   "max_bytes": 100}))
        assert err["kind"] == "resource_exhausted"
        err = tool_error(await c.call_tool("workspace_read_file", {"name": "mcp-vm", "path": "/nope"}))
        assert err["kind"] == "not_found"
        err = tool_error(await c.call_tool("workspace_write_file", {"name": "mcp-vm", "path": "/no/dir/f",
                                                                    "content": "x"}))
        assert err["kind"] == "not_found" and err["remediation"]
        err = tool_error(await c.call_tool("workspace_write_file", {"name": "mcp-vm", "path": "/tmp/x",
                                                                    "content": "%%", "encoding": "base64"}))
        assert err["kind"] == "permanent" and "base64" in err["message"]

        err = tool_error(await c.call_tool("workspace_write_file", {"name": "mcp-vm", "path": "/sys/kernel/x",
                                                                    "content": "x"}))
        assert err["kind"] == "policy_denied"
        err = tool_error(await c.call_tool("workspace_read_file", {"name": "mcp-vm", "path": "/root"}))
        assert err["kind"] == "permanent" and "directory" in err["message"]

        logs = await call("workspace_logs", name="mcp-vm")
        assert logs["bytes"] == len(logs["text"].encode()) > 0 and logs["truncated"] is False
        tail = await call("workspace_logs", name="mcp-vm", max_bytes=logs["bytes"] // 2)
        assert tail["bytes"] <= logs["bytes"] // 2 and tail["truncated"] is True
        assert logs["text"].endswith(tail["text"])
        status = await call("workspace_status", name="mcp-vm")
        assert status["state"] == "running" and status["document"]["readiness"]
        rows = (await call("workspace_list", running_only=True))["workspaces"]
        assert [(x["name"], x["createdBy"]) for x in rows] == [("mcp-vm", "mcp")]

        await call("workspace_write_file", name="mcp-vm", path="/root/keep.txt", content="kept")
        snap = await call("workspace_snapshot", name="mcp-vm", tag="t1")
        assert (snap["workspace"], snap["tag"]) == ("mcp-vm", "t1") and snap["bytes"] > 0
        err = tool_error(await c.call_tool("workspace_snapshot", {"name": "mcp-vm", "tag": "t1"}))
        assert err["kind"] == "conflict"
        fork = await call("workspace_fork", name="mcp-fork", source="mcp-vm:t1")
        assert fork["state"] == "running"
        assert (await call("workspace_read_file", name="mcp-fork", path="/root/keep.txt"))["content"] == "kept"
        rows = (await call("workspace_list"))["workspaces"]
        assert {(x["name"], x["createdBy"]) for x in rows} == {("mcp-vm", "mcp"), ("mcp-fork", "mcp")}
        assert (await call("workspace_delete", name="mcp-fork"))["killed"] is True
        assert (await call("workspace_halt", name="mcp-vm"))["state"] == "halted"
        err = tool_error(await c.call_tool("workspace_exec", {"name": "mcp-vm", "command": "true"}))
        assert err["kind"] == "conflict" and "halted" in err["message"]
        assert (await call("workspace_start", name="mcp-vm"))["state"] == "running"
        assert (await call("workspace_read_file", name="mcp-vm", path="/root/keep.txt"))["content"] == "kept"
        done = await call("workspace_delete", name="mcp-vm")
        assert done == {"name": "mcp-vm", "deleted": True, "killed": True}
        assert ledger.names == []

        # a guest that cannot come up in time: transient, the workspace kept (failed) until deleted
        err = tool_error(await c.call_tool("workspace_create", {"name": "mcp-slow", "boot_timeout": 0.2}))
        assert err["kind"] == "transient", err
        assert ledger.names == ["mcp-slow"]
        assert (await call("workspace_delete", name="mcp-slow"))["deleted"] is True

        # a throwaway VM: its result, and nothing left behind
        run = await call("run", command="echo hi; exit 5", env={"A": "b"})
        assert (run["exit_code"], run["stdout"]["text"], run["backend"]) == (5, "hi\n", "qemu")
        assert (await call("workspace_list"))["workspaces"] == []

    with_client(ServerOptions(state_dir=mcp_state), body)
    assert not (mcp_state / "workspaces" / "mcp-vm").exists()
