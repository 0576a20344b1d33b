"""JSON through CPython's own C codec (``_json``), without importing ``json``.

The ``json`` package compiles regular expressions at import, which pulls in
``re`` and ``enum``: about 1 MiB of private memory in every process that
imports it.  The channel helper runs once per workspace and speaks JSON only
in small control messages, so it uses this module instead.  The scanner and
encoder are the very ones ``json.loads``/``json.dumps`` use, so the results
are the same (``tests/unit/test_jsonlite.py`` checks that against ``json``).

A malformed document makes ``_json`` import ``json.decoder`` to raise its
``JSONDecodeError`` (a ``ValueError``): a one-time cost, paid only by the
process that was sent bad input.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"  # JSON's four


class _Context:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json.loads accepts them


_scan_once = _json.make_scanner(_Context())


def _unserialisable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")




def loads(text: str) -> Any:
    """``json.loads(text)`` for a ``str``.

    :raises ValueError: when ``text`` is not one JSON document.
    :raises RecursionError: on absurdly deep nesting, as ``json.loads``.
    """
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        obj, end = _scan_once(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"Extra data: char {end}")
    return obj


def dumps(obj: Any) -> str:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``.

    :raises TypeError: for a value JSON cannot represent.
    :raises ValueError: for a circular reference.
    """
    # a new encoder per call, as json.dumps: its circular-reference markers are per call
    encode = _json.make_encoder({}, _unserialisable, _json.encode_basestring, None, ":", ",", False, False, True)
    return "".join(encode(obj, 0))
