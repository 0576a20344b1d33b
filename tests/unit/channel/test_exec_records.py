"""ExecRequest and ExecResult are plain slotted classes (CLI start-up), with the
dataclass behaviour their callers use."""

from __future__ import annotations

import copy
import pickle

import pytest

from microagent.channel.exec import ExecRequest, ExecResult


def test_a_request_has_keyword_defaults_equality_and_replace() -> None:
    req = ExecRequest(["ls"], env={"A": "1"}, timeout_s=2.5)
    assert (req.cwd, req.user, req.stdin, req.pty, req.term, req.rows, req.cols) == \
        (None, None, None, False, "xterm-256color", 24, 80)
    assert req == ExecRequest(argv=["ls"], env={"A": "1"}, timeout_s=2.5) and req != ExecRequest(["ls"])
    other = req.replace(argv=["sh"], timeout_s=None)
    assert (other.argv, other.env, other.timeout_s, req.argv) == (["sh"], {"A": "1"}, None, ["ls"])
    req.term = "dumb"  # mutable, as before
    assert pickle.loads(pickle.dumps(req)) == req == copy.deepcopy(req)
    with pytest.raises(TypeError):
        ExecRequest()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ExecRequest(["ls"], nosuch=1)  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        req.nosuch = 1  # type: ignore[attr-defined]


def test_a_result_keeps_its_raw_payload_out_of_repr_and_dict() -> None:
    res = ExecResult("exited", 0, stdout=b"hi\xff", error={"code": "x"}, raw={"status": "exited"})
    assert ExecResult("exited", 0).raw == {} and ExecResult("exited", 0).raw is not ExecResult("exited", 0).raw
    assert "raw" not in repr(res) and res.ok
    out = res.to_dict()
    assert "raw" not in out and out["stdout"] == "hi\ufffd" and out["error"] == {"code": "x"}
    assert out["error"] is not res.error
    assert pickle.loads(pickle.dumps(res)) == res
