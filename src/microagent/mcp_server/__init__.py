"""microagent as an MCP server: agents create, drive and remove workspaces through tools.

Built on the official ``mcp`` SDK (the optional ``mcp`` extra); nothing here is
imported unless ``microagent mcp`` runs. It is an adapter like the CLI: it calls
the workspace library and renders results, holding no VM logic of its own.

- :mod:`.options`: the limits a server runs with (output, timeouts, workspace cap).
- :mod:`.ledger`: the workspaces this server created (cap, tag, ``--cleanup``).
- :mod:`.results`: the typed results each tool returns (their output schemas).
- :mod:`.errors`: microagent errors as tool errors the agent can read.
- :mod:`.tools`: the tools and their annotations.
- :mod:`.http`: streamable HTTP behind a bearer token.
"""

from microagent.mcp_server.options import ServerOptions
from microagent.mcp_server.tools import build_server

__all__ = ["ServerOptions", "build_server"]
