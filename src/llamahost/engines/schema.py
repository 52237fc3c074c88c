"""The JSON Schema subset that structured output and tool arguments are decoded under.

A schema is checked up front, before any generation: first that it is a valid JSON
Schema at all (``jsonschema``'s meta-schema check), then that every keyword in it is
one constrained decoding really enforces. Anything else is a 400 naming the keyword's
path, never a grammar that silently enforces less than the schema says.

The keyword walk is hand-written because no library answers "which keywords does this
grammar compiler enforce": llguidance (the compiler the embedded engine uses) errors on
some keywords it does not implement but silently ignores unknown ones.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from ..errors import InvalidRequest

# Keywords that only describe; they never change which documents are valid.
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly"}
)
# Keywords enforced by the grammar. Keep README's "Structured output" section in step.
CONSTRAINTS = frozenset(
    {
        "type", "enum", "const",
        "properties", "required", "additionalProperties",
        "items", "prefixItems", "minItems", "maxItems",
        "minLength", "maxLength", "pattern", "format",
        # Not multipleOf: llama.cpp's llguidance fails to compile it and then generates
        # unconstrained, silently; refused up front (400) until it is enforced.
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "anyOf", "allOf", "$ref", "$defs", "definitions",
    }
)  # fmt: skip
FORMATS = frozenset({"date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"})
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties")
_LOCAL_REF = re.compile(r"^#(?:/(\$defs|definitions)/([^/]+))?$")


def check_schema(schema: Any, param: str) -> dict[str, Any]:
    """Validate ``schema`` against the supported subset and return the copy to decode
    under. ``param`` is the schema's path in the request, used in error messages.

    The copy is tightened, never loosened: an object schema that lists ``properties``
    but leaves ``additionalProperties`` open gets ``additionalProperties: false``, so
    the model cannot wander off into keys nobody asked for (every such document still
    validates against the original schema).
    """
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param} must be a JSON Schema object", param=param)
    error = best_match(Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema))
    if error is not None:
        where = param + _path(error.absolute_path)
        raise InvalidRequest(f"{where} is not a valid JSON Schema: {error.message}", param=where)
    normalized = copy.deepcopy(schema)
    _walk(normalized, normalized, param)
    return normalized


def _subschemas(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The schemas directly inside ``node``, each with its path relative to it."""
    for key in _SUBSCHEMA_MAPS:
        for name, sub in node.get(key, {}).items():
            yield f".{key}.{name}", sub
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(node.get(key, [])):
            yield f".{key}[{i}]", sub
    for key in _SUBSCHEMAS:
        if key in node:
            yield f".{key}", node[key]


def _path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _walk(node: Any, root: dict[str, Any], where: str) -> None:
    if isinstance(node, bool):
        return
    for key in node:
        if key not in CONSTRAINTS and key not in ANNOTATIONS:
            hint = " (use anyOf)" if key == "oneOf" else ""
            raise InvalidRequest(
                f"{where}.{key}: JSON Schema keyword {key!r} is not supported for constrained decoding{hint}; "
                f"supported: {', '.join(sorted(CONSTRAINTS))}",
                param=f"{where}.{key}",
            )
    if "format" in node and node["format"] not in FORMATS:
        raise InvalidRequest(
            f"{where}.format: format {node['format']!r} is not supported; supported: {', '.join(sorted(FORMATS))}",
            param=f"{where}.format",
        )
    if "$ref" in node:
        _check_ref(node["$ref"], root, f"{where}.$ref")
    for path, sub in _subschemas(node):
        _walk(sub, root, where + path)
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False


def _check_ref(ref: str, root: dict[str, Any], where: str) -> None:
    match = _LOCAL_REF.match(ref)
    if match is None:
        raise InvalidRequest(
            f"{where}: only local references ('#', '#/$defs/NAME', '#/definitions/NAME') are supported, got {ref!r}",
            param=where,
        )
    section, name = match.groups()
    if section is not None and name not in root.get(section, {}):
        raise InvalidRequest(f"{where}: reference {ref!r} points to no definition", param=where)


# The magnitude the number cap allows: integers up to it are exact in a double, which is
# what most JSON parsers read numbers into.
NUMBER_MAGNITUDE = 10**15


def cap_free_values(schema: dict[str, Any], string_length: int, number_decimals: int) -> dict[str, Any]:
    """A copy of a checked schema in which free strings and numbers are bounded: a string
    with no ``maxLength``, ``enum``, ``const``, ``pattern`` or ``format`` of its own to at
    most ``string_length`` characters; a number with no ``multipleOf`` to at most
    ``number_decimals`` decimals (as ``multipleOf: 10^-n``), and numbers and integers to a
    magnitude under ``NUMBER_MAGNITUDE`` where the schema gives no bound. 0 leaves a kind
    as given.

    Like ``check_schema``'s copy it only tightens: every document it admits is valid
    against ``schema``. It is the grammar's guard for small models, which can ramble in a
    string, or in a number's digits, until the token budget cuts the JSON off; a value
    that reaches the cap is ended by the grammar and the reply still parses.
    """
    capped = copy.deepcopy(schema)
    _cap(capped, string_length, number_decimals)
    return capped


def _types(node: dict[str, Any]) -> set[str]:
    types = node.get("type")
    return {types} if isinstance(types, str) else set(types or ())


def _cap(node: Any, string_length: int, number_decimals: int) -> None:
    if not isinstance(node, dict):
        return
    types = _types(node)
    fixed = "enum" in node or "const" in node
    if string_length and "string" in types and not fixed and not any(k in node for k in ("maxLength", "pattern", "format")):
        node["maxLength"] = max(string_length, node.get("minLength", 0))
    if number_decimals and types & {"number", "integer"} and not fixed:
        if "number" in types and "multipleOf" not in node:
            node["multipleOf"] = 10.0**-number_decimals
        # A bound is added only where it leaves values to choose from: a schema whose own
        # lower bound is past the cap keeps its range open.
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        if high is None and (low is None or low < NUMBER_MAGNITUDE):
            node["maximum"] = NUMBER_MAGNITUDE
        if low is None and (high is None or high > -NUMBER_MAGNITUDE):
            node["minimum"] = -NUMBER_MAGNITUDE
    for _, sub in _subschemas(node):
        _cap(sub, string_length, number_decimals)
