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
    for key in _SUBSCHEMA_MAPS:
        for name, sub in node.get(key, {}).items():
            _walk(sub, root, f"{where}.{key}.{name}")
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(node.get(key, [])):
            _walk(sub, root, f"{where}.{key}[{i}]")
    for key in _SUBSCHEMAS:
        if key in node:
            _walk(node[key], root, f"{where}.{key}")
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
