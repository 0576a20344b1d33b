"""workspace_create with a volume, setup commands and a service, through a real MCP client
session and a real QEMU guest (docs/mcp.md); host folders are refused before anything is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp_support import tool_error, with_client

from microagent.mcp_server import ServerOptions
from microagent.workspace import volumes as vols

pytestmark = pytest.mark.vm


def test_create_with_volume_setup_and_service(mcp_state: Path, tmp_path: Path) -> None:
    vols.create_volume(mcp_state, "mcpdata", 16)

    async def body(c: Any, ledger: Any) -> None:
        async def call(tool: str, **args: Any) -> Any:
            res = await c.call_tool(tool, args)
            assert not res.is_error, (tool, res.content)
            return res.structured_content

        err = tool_error(await c.call_tool("workspace_create", {"name": "mcp-folder",
                                                                "volumes": [f"{tmp_path}:/work"]}))
        assert err["kind"] == "permanent" and "cannot be attached through MCP" in err["message"], err
        assert not (mcp_state / "workspaces" / "mcp-folder").exists()

        created = await call("workspace_create", name="mcp-opts", volumes=["mcpdata:/data"],
                             setup=["echo set > /data/setup.txt", "echo twice >> /data/setup.txt"],
                             service="while true; do echo alive > /tmp/svc; sleep 1; done", restart="always")
        assert created["state"] == "running"
        r = await call("workspace_exec", name="mcp-opts",
                       command="cat /data/setup.txt; grep -c ' /data ext4 ' /proc/mounts; "
                               "for i in 1 2 3 4 5; do [ -s /tmp/svc ] && break; sleep 1; done; cat /tmp/svc")
        assert r["stdout"]["text"] == "set\ntwice\n1\nalive\n", r
        await call("workspace_delete", name="mcp-opts", force=True)

    with_client(ServerOptions(state_dir=mcp_state), body)
    assert vols.inspect_volume(mcp_state, "mcpdata")["attachedTo"] == []  # released with the workspace
