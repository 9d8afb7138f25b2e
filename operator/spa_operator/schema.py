"""Pydantic JSON Schema -> Kubernetes structural OpenAPI v3 schema.

A CRD's schema must be *structural*: every node has a `type`, there are no `$ref`s, no
`anyOf` / `oneOf` of types, no `const`, and exclusive bounds are OpenAPI 3.0 booleans.
This module rewrites pydantic's JSON Schema (2020-12 flavour) into that form and keeps what
the API server can enforce: bounds, lengths, patterns, enums, required fields and
descriptions. Defaults stay in pydantic (they are added to descriptions for `kubectl
explain`), so stored objects hold what the user wrote and the operator alone applies them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["UnsupportedSchema", "structural_schema"]

#: Keywords copied unchanged (after their values are converted where they hold schemas).
_KEPT = {
    "type",
    "format",
    "description",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
}
#: Keywords dropped: annotations without meaning to the API server.
_DROPPED = {"title", "examples", "$defs", "additionalProperties", "default", "const",
            "exclusiveMinimum", "exclusiveMaximum", "properties", "items", "anyOf", "$ref"}
#: Longest default value quoted in a description.
_MAX_DEFAULT_IN_DESCRIPTION = 80

#: Extra x-kubernetes-validations for the object of a named model ($defs name).
RulesFor = Callable[[str], list[dict[str, Any]]]


class UnsupportedSchema(ValueError):
    """The pydantic schema uses a construct a structural schema cannot express."""


def structural_schema(schema: Mapping[str, Any],
                      rules_for: RulesFor | None = None) -> dict[str, Any]:
    """Convert a pydantic model's JSON Schema to a structural schema.

    `rules_for(name)` returns CEL rules to attach to every object inlined from `$defs[name]`
    (and, for the root, from its `title`).
    """
    defs = schema.get("$defs", {})
    rules = rules_for or (lambda _name: [])
    out = _convert(schema, defs, rules, path="")
    if title := schema.get("title"):
        _add_rules(out, rules(title))
    return out


def _convert(node: Mapping[str, Any], defs: Mapping[str, Any], rules: RulesFor,
             path: str) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name not in defs:
            raise UnsupportedSchema(f"{path or '<root>'}: unresolved $ref {node['$ref']}")
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        out = _convert(merged, defs, rules, path)
        _add_rules(out, rules(name))
        return out

    if "anyOf" in node:
        options = node["anyOf"]
        non_null = [o for o in options if o.get("type") != "null"]
        if len(non_null) != 1:
            raise UnsupportedSchema(
                f"{path or '<root>'}: anyOf of several types cannot be structural: {options}")
        siblings = {k: v for k, v in node.items() if k != "anyOf"}
        out = _convert({**non_null[0], **siblings}, defs, rules, path)
        if len(non_null) < len(options):
            out["nullable"] = True
        return out

    unknown = set(node) - _KEPT - _DROPPED - {"nullable"}
    unknown = {k for k in unknown if not k.startswith("x-kubernetes-")}
    if unknown:
        raise UnsupportedSchema(f"{path or '<root>'}: unsupported keywords {sorted(unknown)}")

    out: dict[str, Any] = {k: v for k, v in node.items()
                           if k in _KEPT or k.startswith("x-kubernetes-") or k == "nullable"}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "enum" in out and "type" not in out:
        out["type"] = _json_type(out["enum"][0])
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if exclusive in node:  # JSON Schema 2020-12 number -> OpenAPI 3.0 boolean
            out[bound] = node[exclusive]
            out[exclusive] = True
    if "default" in node:
        _describe_default(out, node["default"])

    kind = out.get("type")
    if kind is None:
        raise UnsupportedSchema(f"{path or '<root>'}: no type (a structural schema needs one)")
    if kind == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {k: _convert(v, defs, rules, f"{path}.{k}")
                                 for k, v in props.items()}
        elif extra is True or (extra is None and not props):
            # A free-form object (dict[str, Any]): keep what the user wrote, unvalidated.
            out["x-kubernetes-preserve-unknown-fields"] = True
        if isinstance(extra, Mapping):
            if props:
                raise UnsupportedSchema(f"{path}: both properties and additionalProperties")
            out["additionalProperties"] = _convert(extra, defs, rules, f"{path}.*")
    elif kind == "array":
        if "items" not in node:
            raise UnsupportedSchema(f"{path}: array without items")
        out["items"] = _convert(node["items"], defs, rules, f"{path}[]")
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _describe_default(out: dict[str, Any], default: Any) -> None:
    if default is None or isinstance(default, dict | list):
        return
    text = json.dumps(default) if not isinstance(default, str) else default
    if len(text) > _MAX_DEFAULT_IN_DESCRIPTION:
        return
    description = out.get("description", "").rstrip()
    sep = " " if description else ""
    out["description"] = f"{description}{sep}Default: {text}."


def _add_rules(out: dict[str, Any], extra: list[dict[str, Any]]) -> None:
    if extra:
        out.setdefault("x-kubernetes-validations", []).extend(extra)
