"""Rendering results: human text by default, one JSON document with ``--json``.

stdout carries results only; errors and progress go to stderr, except that
in ``--json`` mode the error envelope is the JSON document on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

SCHEMA_VERSION = 1


def emit_json(doc: dict[str, Any]) -> None:
    out = {"schemaVersion": SCHEMA_VERSION, **doc}
    sys.stdout.write(json.dumps(out, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def emit(doc: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        emit_json(doc)
    else:
        rendered = text(doc)
        if rendered:
            sys.stdout.write(rendered.rstrip("\n") + "\n")


def error_envelope(err: dict[str, Any]) -> dict[str, Any]:
    return {"ok": False, "error": err}


def print_error(err: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(error_envelope(err))
        return
    sys.stderr.write(f"microagent: {err.get('message')}\n")
    if err.get("remediation"):
        sys.stderr.write(f"  hint: {err['remediation']}\n")
