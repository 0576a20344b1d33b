"""Pure parts of the session layer: cp arguments, the pty CRLF filter, exec option parsing."""

from __future__ import annotations

import pytest

from microagent.errors import InvalidRequest
from microagent.workspace.sessions import CRLFToLF, parse_cp_arg


def test_parse_cp_arg() -> None:
    assert parse_cp_arg("ws1:/tmp/x") == ("ws1", "/tmp/x")
    assert parse_cp_arg("./ws1:/tmp/x") == (None, "./ws1:/tmp/x")
    assert parse_cp_arg("/abs/path") == (None, "/abs/path")
    assert parse_cp_arg("file.txt") == (None, "file.txt")
    with pytest.raises(InvalidRequest):
        parse_cp_arg("ws1:relative")


def test_crlf_filter_handles_split_chunks() -> None:
    out = bytearray()
    f = CRLFToLF(out.extend)
    for chunk in (b"a\r", b"\nb\r\n", b"c\r", b"d"):
        f(chunk)
    f.flush_pending()
    assert bytes(out) == b"a\nb\nc\rd"


def test_exec_options_after_the_name() -> None:
    from microagent.cli.cmd_exec import exec_

    ctx = exec_.make_context("exec", ["-i", "ws", "-e", "A=1", "-t", "--timeout", "3", "ls", "-la"])
    assert ctx.params["name"] == "ws" and ctx.params["env"] == ("A=1",)
    assert ctx.params["interactive"] and ctx.params["tty"] and ctx.params["timeout"] == 3.0
    assert ctx.params["command"] == ("ls", "-la")
    ctx = exec_.make_context("exec", ["ws", "-it", "-eB=2", "--", "sh", "-c", "echo -n"])
    assert ctx.params["env"] == ("B=2",) and ctx.params["command"][-3:] == ("sh", "-c", "echo -n")
