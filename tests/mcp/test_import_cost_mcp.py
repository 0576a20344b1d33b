"""The MCP SDK is loaded only when ``microagent mcp`` runs, not for help or other commands."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("args", [["--help"], ["mcp", "--help"]])
def test_help_does_not_import_the_mcp_sdk(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from microagent.cli.main import cli\n"
        "try:\n"
        f"    cli.main(args={args!r}, standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES:', ' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out[out.rindex("MODULES:"):].split()[1:])  # the help text above names `mcp` too
    assert {"mcp", "microagent.mcp_server", "pydantic", "anyio"}.isdisjoint(loaded), sorted(
        m for m in loaded if m.startswith(("mcp", "microagent.mcp_server", "pydantic", "anyio")))
