"""Turning msgspec's ValidationError into a message that names the field.

msgspec reports ``Expected `int` >= 1 - at `$.config.cpuCount```; callers and
users get ``config.cpuCount must be between 1 and 64, got 0``.  The field's
type (bounds, choices, the message a pattern carries in ``Meta.extra``) is
looked up along the error's path, and so is the offending value.
"""

import re
from typing import Any

import msgspec
import msgspec.inspect as mi

_AT = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_EXPECTED = {"int": "an integer", "float": "a number", "str": "a string", "bool": "a boolean",
             "object": "a JSON object", "array": "a list", "null": "null"}
_GOT = {"int": "integer", "float": "number", "str": "string", "bool": "boolean",
        "object": "object", "array": "list", "null": "null"}


def describe(exc: msgspec.ValidationError, root: type, data: Any, label: str = "request") -> tuple[str, str]:
    """``(message, remediation)`` for ``exc`` raised decoding ``data`` as ``root``.

    ``label`` names the document itself, for errors at its top level.
    """
    m = _AT.fullmatch(str(exc))
    assert m is not None  # the pattern matches any text
    what = m["what"]
    steps: list[str | int] = [name or int(index) for name, index in _STEP.findall(m["path"] or "")]
    where = _join(steps) or label
    if f := re.fullmatch(r"Object missing required field `(.+)`", what):
        return f"{_join([*steps, f[1]])} is required", ""
    if f := re.fullmatch(r"Object contains unknown field `(.+)`", what):
        return f"{where} has unknown field {f[1]!r}", ""
    if f := re.fullmatch(r"Expected `([^`]+)`, got `([^`]+)`", what):
        return f"{where} must be {_expected(f[1])}, got {_GOT.get(f[2], f[2])}", ""
    field_type, extra, value = _locate(root, data, steps)
    if isinstance(field_type, mi.LiteralType):
        choices = ", ".join(str(v) for v in field_type.values)
        return f"{where} must be one of {choices}; got {value!r}", ""
    if value == "" or value == []:
        return f"{where} must not be empty", ""
    if "message" in extra:
        return extra["message"].format(where=where, value=value), extra.get("remediation", "")
    if isinstance(field_type, (mi.IntType, mi.FloatType)) and None not in (field_type.ge, field_type.le):
        return f"{where} must be between {field_type.ge} and {field_type.le}, got {value}", ""
    return f"{where}: {what}", ""


def _join(steps: list[str | int]) -> str:
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _expected(spec: str) -> str:
    kinds = [k for k in spec.split(" | ") if k != "null"] or ["null"]
    return " or ".join(_EXPECTED.get(k, f"`{k}`") for k in kinds)


def _locate(root: type, data: Any, steps: list[str | int]) -> tuple[mi.Type, dict[str, Any], Any]:
    """The declared type at ``steps`` (without metadata), its ``Meta.extra`` and the value there."""
    node: mi.Type = mi.type_info(root)
    value = data
    for step in steps:
        node, _ = _unwrap(node)
        if isinstance(node, mi.StructType) and isinstance(step, str):
            node = next((f.type for f in node.fields if f.encode_name == step), mi.AnyType())
        elif isinstance(node, (mi.ListType, mi.VarTupleType)) and isinstance(step, int):
            node = node.item_type
        else:
            node = mi.AnyType()
        if isinstance(value, dict) and isinstance(step, str):
            value = value.get(step)
        elif isinstance(value, list) and isinstance(step, int) and step < len(value):
            value = value[step]
        else:
            value = None
    node, extra = _unwrap(node)
    return node, extra, value


def _unwrap(node: mi.Type) -> tuple[mi.Type, dict[str, Any]]:
    """Strip ``Meta`` (keeping its ``extra``) and the ``None`` of an optional."""
    extra: dict[str, Any] = {}
    while True:
        if isinstance(node, mi.Metadata):
            extra = {**(node.extra or {}), **extra}
            node = node.type
        elif isinstance(node, mi.UnionType) and len(others := [t for t in node.types
                                                               if not isinstance(t, mi.NoneType)]) == 1:
            node = others[0]
        else:
            return node, extra
