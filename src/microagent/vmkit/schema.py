"""The supervisor protocol's JSON Schema, generated from the request/response structs.

The checked-in copy is docs/supervisor-protocol.schema.json; a test fails when
it drifts from the structs.  Regenerate it with::

    python -m microagent.vmkit.schema > docs/supervisor-protocol.schema.json
"""

import json
from typing import Any

import msgspec

from microagent.vmkit.types import REQUEST_TYPES, Response

_REF = "#/$defs/{name}"


def protocol_schema() -> dict[str, Any]:
    """One document: ``#/$defs/Request`` (stdin) and ``#/$defs/Response`` (stdout)."""
    refs, defs = msgspec.json.schema_components([*REQUEST_TYPES, Response], ref_template=_REF)
    *request_refs, response_ref = refs
    defs["Request"] = {
        "description": "A supervisor request: the command picks the type, and with it what is required.",
        "oneOf": request_refs,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "microagent supervisor protocol",
        "description": ("One JSON request on a supervisor's stdin, one JSON response on its stdout "
                        "(docs/supervisor-api.md). Generated from src/microagent/vmkit/types.py "
                        "by 'python -m microagent.vmkit.schema'; do not edit by hand."),
        "oneOf": [{"$ref": _REF.format(name="Request")}, response_ref],
        "$defs": dict(sorted(defs.items())),
    }


def render() -> str:
    """The schema file's exact text."""
    return json.dumps(protocol_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
