"""Schemas for hosted APIs' strict structured-output mode (`response_format` with `strict`)."""

from __future__ import annotations

import copy
from typing import Any


class _FreeForm(Exception):
    """Raised inside `strict_json_schema` on an object that has no `properties`."""


def strict_json_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of `schema` in the form hosted APIs require for strict structured outputs.

    Every object gets `additionalProperties: false` and lists all its properties as required
    (optional fields stay nullable through their `anyOf`), `default: null` is dropped, a
    one-element `allOf` is inlined, and a `$ref` with sibling keywords is replaced by the
    definition it points to, as strict mode does not allow siblings next to a `$ref`.

    Returns:
        The rewritten copy, or None when strict mode cannot express the schema: it has an
        object without `properties` (a free-form dict), and strict objects allow no other keys.
    """
    defs = schema.get("$defs")
    defs = defs if isinstance(defs, dict) else {}

    def fix(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and len(node) > 1 and ref.startswith("#/$defs/"):
            target = defs.get(ref[len("#/$defs/") :])
            if isinstance(target, dict):
                node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        all_of = node.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
            return fix({**{k: v for k, v in node.items() if k != "allOf"}, **all_of[0]})
        out = copy.deepcopy(node)
        for key in ("properties", "$defs"):
            if isinstance(node.get(key), dict):
                out[key] = {name: fix(sub) for name, sub in node[key].items()}
        for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
            if isinstance(node.get(key), list):
                out[key] = [fix(sub) for sub in node[key]]
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                out[key] = fix(node[key])
        if isinstance(out.get("properties"), dict):
            out["required"] = list(out["properties"])
        elif out.get("type") == "object":
            raise _FreeForm
        if out.get("type") == "object":
            out["additionalProperties"] = False
        if "default" in out and out["default"] is None:
            del out["default"]
        return out

    try:
        fixed: dict[str, Any] = fix(schema)
    except _FreeForm:
        return None
    return fixed
