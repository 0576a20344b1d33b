"""The ``shell`` session kind (docs/protocol.md, "shell").

This module owns opening an interactive login shell on a guest pty. A shell
is an exec with ``pty:true``, so it returns an
:class:`~microagent.channel.exec.ExecSession` (``write``, ``resize``,
``signal``, ``wait``, ``close``). Putting the local terminal into raw mode
and detaching are the CLI's business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO

from microagent.channel.exec import ExecRequest, ExecSession, OutputSink, start
from microagent.channel.mux import ChannelConnection

__all__ = ["open_shell"]


def open_shell(
    conn: ChannelConnection,
    *,
    argv: Sequence[str] | None = None,
    term: str = "xterm-256color",
    rows: int = 24,
    cols: int = 80,
    env: Mapping[str, str] | Sequence[str] = (),
    user: str | int | None = None,
    cwd: str | None = None,
    output: OutputSink | None = None,
    stdin: IO[bytes] | None = None,
) -> ExecSession:
    """Open a shell on a new guest pty.

    :param argv: the shell command; ``None`` = the user's login shell with ``-l``.
    :param term: ``TERM`` inside the guest.
    :param rows: initial terminal rows.
    :param cols: initial terminal columns.
    :param env: extra ``K=V`` environment.
    :param user: user to run as (default root).
    :param cwd: working directory (default the user's home).
    :param output: sink for terminal output as it arrives (e.g.
        ``sys.stdout.buffer``); ``None`` = collect into the result.
    :param stdin: a binary file fed to the pty from a thread (e.g.
        ``sys.stdin.buffer`` in raw mode); ``None`` = write with
        :meth:`ExecSession.write`.
    :raises InvalidRequest: if a field is malformed.
    :raises ChannelClosed: if the channel is closed.
    """
    request = ExecRequest(
        argv=list(argv) if argv is not None else [],
        env=env,
        cwd=cwd,
        user=user,
        stdin=stdin if stdin is not None else True,
        pty=True,
        term=term,
        rows=rows,
        cols=cols,
    )
    return start(conn, request, stdout=output, kind="shell")
