"""The checked-in JSON Schema of the supervisor protocol matches the structs."""

from __future__ import annotations

from pathlib import Path

from microagent.vmkit.schema import protocol_schema, render
from microagent.vmkit.types import COMMANDS

SCHEMA = Path(__file__).resolve().parents[3] / "docs" / "supervisor-protocol.schema.json"


def test_checked_in_schema_matches_the_structs() -> None:
    assert SCHEMA.read_text() == render(), (
        "docs/supervisor-protocol.schema.json is stale: regenerate it with "
        "'python -m microagent.vmkit.schema > docs/supervisor-protocol.schema.json'")


def test_schema_covers_every_command_once_and_requires_what_each_needs() -> None:
    defs = protocol_schema()["$defs"]
    seen: list[str] = []
    for ref in defs["Request"]["oneOf"]:
        kind = defs[ref["$ref"].rsplit("/", 1)[1]]
        seen += kind["properties"]["command"]["enum"]
        needs = set(kind.get("required", ()))
        if kind["title"] == "HostRequest":
            assert needs == {"command"}
        else:
            assert {"command", "identity", "config"} <= needs
        assert kind["additionalProperties"] is False
    assert sorted(seen) == sorted(COMMANDS)
    assert defs["BootConfig"]["required"] == ["stateDir", "kernelPath", "rootfsPath"]
    assert defs["Config"]["properties"]["memoryMiB"]["minimum"] == 64
