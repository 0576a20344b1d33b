"""microagent.jsonlite gives what json.loads / json.dumps give, without importing json."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microagent import jsonlite

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_dumps_is_json_dumps_and_loads_reads_it_back(doc: object) -> None:
    text = jsonlite.dumps(doc)
    assert text == json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    assert jsonlite.loads(text) == json.loads(text) == doc


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(' \t\n\r{}[]:,"\\0123456789.eE+-truefalsnNaIiy\x00\x1fé'), max_size=24))
def test_loads_accepts_and_refuses_what_json_loads_does(text: str) -> None:
    try:
        want = json.loads(text)
    except json.JSONDecodeError:
        with pytest.raises(ValueError):
            jsonlite.loads(text)
        return
    got = jsonlite.loads(text)
    assert repr(got) == repr(want)  # repr: NaN != NaN


def test_edge_cases() -> None:
    assert jsonlite.loads(' \n{"a": [1, 2.5, "x\\u00e9"]}\t') == {"a": [1, 2.5, "xé"]}
    assert math.isinf(jsonlite.loads("-Infinity"))
    assert jsonlite.dumps({"message": 'quote " and \x01 é'}) == '{"message":"quote \\" and \\u0001 é"}'
    for bad in ("", "   ", "{", "[1,]", '{"a":1} x', "\ufeff{}", '"\x01"'):
        with pytest.raises(ValueError):
            jsonlite.loads(bad)
    with pytest.raises(TypeError):
        jsonlite.dumps({"a": object()})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        jsonlite.dumps(loop)
    assert jsonlite.dumps([1, [2]]) == "[1,[2]]"  # the failed call above left no marker behind
    with pytest.raises(RecursionError):
        jsonlite.loads("[" * 100_000)


def test_it_imports_neither_json_nor_re() -> None:
    code = ("import sys; from microagent import jsonlite\n"
            "jsonlite.loads(jsonlite.dumps({'a': [1, 'b']}))\n"
            "print(' '.join(m for m in ('json', 're', 'enum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": ":".join(sys.path)}).stdout
    assert out.strip() == ""
