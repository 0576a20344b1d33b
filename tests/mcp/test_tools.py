"""The tool list, its schemas and annotations, and the errors and limits that need no VM boot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp_support import tool_error, with_client

from microagent.errors import Permanent
from microagent.mcp_server import ServerOptions
from microagent.mcp_server.options import CREATED_BY

TOOLS = {"run", "workspace_create", "workspace_start", "workspace_list", "workspace_status", "workspace_exec",
         "workspace_read_file", "workspace_write_file", "workspace_logs", "workspace_halt", "workspace_delete",
         "workspace_snapshot", "workspace_fork"}
MICROAGENT = str(Path(sys.executable).parent / "microagent")
READ_ONLY = {"workspace_list", "workspace_status", "workspace_read_file", "workspace_logs"}
DESTRUCTIVE = {"workspace_exec", "workspace_write_file", "workspace_halt", "workspace_delete"}


def test_tools_publish_schemas_and_truthful_annotations(tmp_path: Path) -> None:
    async def body(client: Any, _: Any) -> None:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        for name, tool in tools.items():
            assert tool.description, name
            assert tool.input_schema["type"] == "object"
            assert tool.output_schema and tool.output_schema["type"] == "object", name
            ann = tool.annotations
            assert ann.read_only_hint is (name in READ_ONLY), name
            assert ann.destructive_hint is (name in DESTRUCTIVE), name
        exec_in = tools["workspace_exec"].input_schema
        assert exec_in["required"] == ["name", "command"]
        assert {"env", "cwd", "stdin", "stdin_base64", "timeout", "output_limit"} <= set(exec_in["properties"])
        out = tools["workspace_exec"].output_schema
        assert {"status", "exit_code", "stdout", "stderr"} <= set(out["properties"])
        stream = out["$defs"]["Output"]["properties"]
        assert set(stream) == {"text", "bytes", "truncated"}
        assert set(tools["run"].input_schema["properties"]) >= {"image", "command", "env", "timeout", "network"}
        assert tools["run"].input_schema["properties"]["network"]["enum"] == ["isolated", "user", "nat"]
        assert set(tools["workspace_read_file"].output_schema["properties"]) == {"path", "size", "encoding", "content"}

    with_client(ServerOptions(state_dir=tmp_path), body)


def test_bad_input_comes_back_as_kind_message_remediation(tmp_path: Path) -> None:
    async def body(client: Any, ledger: Any) -> None:
        err = tool_error(await client.call_tool("workspace_status", {"name": "ghost"}))
        assert err["kind"] == "not_found" and "ghost" in err["message"] and err["remediation"]
        err = tool_error(await client.call_tool("workspace_exec", {"name": "../etc", "command": "true"}))
        assert err["kind"] == "permanent" and "not a safe name" in err["message"] and err["remediation"]
        for tool in ("workspace_create", "workspace_fork"):
            err = tool_error(await client.call_tool(tool, {"name": "a/b", "source": "x:y", "start": False}))
            assert err["kind"] == "permanent" and "not a safe name" in err["message"], tool
        assert ledger.names == []
        for tool in ("workspace_halt", "workspace_start", "workspace_logs", "workspace_read_file"):
            args = {"name": "ghost", **({"path": "/x"} if tool == "workspace_read_file" else {})}
            assert tool_error(await client.call_tool(tool, args))["kind"] == "not_found", tool
        # the SDK's own schema check: a wrong type never reaches microagent
        res = await client.call_tool("workspace_exec", {"name": "w", "command": 3})
        assert res.is_error and "command" in res.content[0].text
        res = await client.call_tool("workspace_exec", {"name": "w", "command": "true", "output_limit": 0})
        assert res.is_error and "output_limit" in res.content[0].text

    with_client(ServerOptions(state_dir=tmp_path), body)


def test_unsupported_backend_is_refused_before_anything_is_built(mcp_state: Path) -> None:
    async def body(client: Any, ledger: Any) -> None:
        err = tool_error(await client.call_tool("workspace_create", {"name": "mac", "start": False}))
        assert err["kind"] == "unsupported" and err["remediation"]
        assert ledger.names == []

    with_client(ServerOptions(state_dir=mcp_state, backend="apple-vf"), body)
    assert not (mcp_state / "workspaces" / "mac").exists()


def test_cap_tag_conflicts_and_cleanup_without_booting(mcp_state: Path) -> None:
    """Two prepared workspaces fill a cap of 2; they are tagged in list; --cleanup's removal deletes them."""
    async def body(client: Any, ledger: Any) -> None:
        for name in ("cap-a", "cap-b"):
            res = await client.call_tool("workspace_create", {"name": name, "start": False})
            assert not res.is_error, res
            assert res.structured_content["state"] == "prepared"
            assert res.structured_content["createdBy"] == CREATED_BY
        err = tool_error(await client.call_tool("workspace_create", {"name": "cap-c", "start": False}))
        assert err["kind"] == "resource_exhausted" and "--max-workspaces" in err["remediation"]
        err = tool_error(await client.call_tool("run", {"command": "true"}))
        assert err["kind"] == "resource_exhausted"

        rows = (await client.call_tool("workspace_list", {})).structured_content["workspaces"]
        assert {(r["name"], r["createdBy"]) for r in rows} >= {("cap-a", "mcp"), ("cap-b", "mcp")}
        table = subprocess.run([MICROAGENT, "list", "--state-dir", str(mcp_state)], capture_output=True,
                               text=True, check=True).stdout.splitlines()
        assert table[0].split()[-1] == "BY"
        assert [line.split()[-1] for line in table if line.startswith("cap-")] == ["mcp", "mcp"]

        # wrong state: a prepared workspace runs nothing and cannot be halted
        err = tool_error(await client.call_tool("workspace_exec", {"name": "cap-a", "command": ["true"]}))
        assert err["kind"] == "conflict" and "prepared" in err["message"]
        assert tool_error(await client.call_tool("workspace_halt", {"name": "cap-a"}))["kind"] == "conflict"
        status = (await client.call_tool("workspace_status", {"name": "cap-a"})).structured_content
        assert status["state"] == "prepared" and status["document"]["verification"]["ok"] is True

        # deleting one frees a place; the name clash is a conflict, not a cap error
        done = (await client.call_tool("workspace_delete", {"name": "cap-b"})).structured_content
        assert done == {"name": "cap-b", "deleted": True, "killed": False}
        err = tool_error(await client.call_tool("workspace_create", {"name": "cap-a", "start": False}))
        assert err["kind"] == "conflict"
        assert ledger.names == ["cap-a"]

    ledger = with_client(ServerOptions(state_dir=mcp_state, max_workspaces=2), body)
    assert ledger.cleanup() == []
    assert not (mcp_state / "workspaces" / "cap-a").exists()


def test_options_are_checked() -> None:
    with pytest.raises(Permanent, match="output limit"):
        ServerOptions(output_limit=0)
    with pytest.raises(Permanent, match="exec timeout"):
        ServerOptions(exec_timeout=-1)
    with pytest.raises(Permanent, match="negative"):
        ServerOptions(max_workspaces=-1)
