"""``microagent mcp``: serve the workspace tools over MCP (stdio, or streamable HTTP).

The ``mcp`` SDK is an optional extra and heavy to import: it is imported only
inside the command's body, never by ``microagent --help``.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from microagent.cli.main import backend_option, state_dir_option, usage_errors
from microagent.cli.params import SECONDS


@click.command()
@click.option("--http", "listen", metavar="[HOST:]PORT", default=None,
              help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (host default 127.0.0.1)")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="HTTP bearer token (first line); else $MICROAGENT_MCP_TOKEN, else one is generated (loopback only)")
@click.option("--max-workspaces", type=int, default=None,
              help="workspaces this server may have at once (default 4)")
@click.option("--output-limit", type=int, default=None, metavar="BYTES",
              help="default bytes kept per output stream, file or log read (default 262144)")
@click.option("--exec-timeout", type=SECONDS, default=None, metavar="S",
              help="default seconds an exec or run may take (default 120)")
@click.option("--cleanup", is_flag=True, help="delete the workspaces this server created when it exits")
@backend_option
@click.option("--supervisor", default=None, help="path of the supervisor executable to use")
@state_dir_option
def mcp(listen: str | None, token_file: str | None, max_workspaces: int | None, output_limit: int | None,
        exec_timeout: float | None, cleanup: bool, backend: str | None, supervisor: str | None,
        state_dir: str | None) -> int:
    """Serve MCP tools that create, drive and delete workspaces (docs/mcp.md)."""
    from pathlib import Path

    from microagent.errors import NotFound

    try:
        import anyio

        from microagent.mcp_server import ServerOptions, build_server
    except ImportError as exc:
        raise NotFound(f"the MCP SDK is not installed ({exc.name} is missing)",
                       "pip install 'microagent[mcp]'") from exc
    from microagent.mcp_server import http
    from microagent.mcp_server import options as defaults

    with usage_errors():
        opts = ServerOptions(
            output_limit=defaults.DEFAULT_OUTPUT_LIMIT if output_limit is None else output_limit,
            exec_timeout=defaults.DEFAULT_EXEC_TIMEOUT_S if exec_timeout is None else exec_timeout,
            max_workspaces=defaults.DEFAULT_MAX_WORKSPACES if max_workspaces is None else max_workspaces,
            state_dir=Path(state_dir) if state_dir else None, backend=backend, supervisor=supervisor)
        if listen is not None:
            host, port = http.parse_listen(listen)
            token, generated = http.resolve_token(host, token_file)
        elif token_file is not None:
            raise click.UsageError("--token-file is for --http only")
    server, ledger = build_server(opts)

    def finish() -> None:
        if cleanup:
            for name, error in ledger.cleanup():
                sys.stderr.write(f"microagent mcp: could not delete {name}: {error}\n")

    try:
        if listen is None:
            # The SDK reads stdin in a worker thread that only an EOF ends, so a signal
            # cannot unwind the server: clean up right here and leave.
            def on_signal(signum: int, frame: object) -> None:
                finish()
                sys.stderr.flush()
                os._exit(0)

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            anyio.run(server.run_stdio_async)
        else:
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: cleanup below runs
            url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/mcp"
            sys.stderr.write(f"microagent mcp: serving {url}\n")
            if generated:
                sys.stderr.write(f"microagent mcp: bearer token (generated for this run): {token}\n")
            sys.stderr.flush()
            anyio.run(http.serve, server, host, port, token)
    except KeyboardInterrupt:
        pass
    finally:
        finish()  # stdin closed, or the HTTP server stopped on SIGINT/SIGTERM
    return 0
