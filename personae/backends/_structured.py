"""Bounded structured output: a JSON schema as a grammar that leaves a model no slack.

`json_schema_grammar(schema)` returns a GBNF grammar (llama.cpp's format, which vLLM's default
xgrammar backend also reads) that accepts exactly one spelling of each value: the compact JSON
that pydantic's `model_dump_json()` writes.

- No whitespace outside strings: `{"empathy":4,"clarity":2,"rationale":"Warm but vague."}`.
- Every property of an object, in the order of the schema's `properties` (`required` is not
  consulted: an optional field is written too, as `null` when its schema allows null).
- Strings of at most `maxLength` characters (`DEFAULT_MAX_STRING_LENGTH` without one), none of
  them `"`, `\\`, a control character or a surrogate (so no escapes and no newlines).
- Integers in decimal without a sign `+` or leading zeros, exactly within `minimum`/`maximum`
  (exclusive bounds too); an open side stops at `DEFAULT_MAX_DIGITS` digits.
- Numbers likewise for the integer part (bounds rounded outward to integers, exclusive bounds
  taken as inclusive), then at most `FRACTION_DIGITS` decimals and no exponent.
- Arrays of at most `maxItems` items (`DEFAULT_MAX_ITEMS` without one).
- `enum` and `const` values as their compact JSON text; `anyOf` as alternatives.
- A free-form value (`{}`, an object without `properties`, an array without `items`) as any
  JSON nesting at most `DEFAULT_MAX_DEPTH` objects or arrays, under the caps above; an object
  without `properties` has at most `DEFAULT_MAX_ITEMS` members.

So every accepted text is finite with a known bound: a model cannot pad with whitespace or run a
string on until `max_tokens`. The subset is what pydantic emits for flat rubric models: `object`
with `properties`, local `$ref`s into `$defs` (not recursive), a one-element `allOf`, `anyOf`,
`enum`, `const`, `string`, `integer`, `number`, `boolean`, `null` and `array` with `items`.
Anything else raises `ValueError` naming the construct and where it is. The grammar is narrower
than the schema (escapes, exponents and whitespace are valid JSON it refuses) and, for numbers
with fractional or exclusive bounds, a little wider: validate replies with pydantic.

`json_schema_regex` renders the same language as a Python regular expression (the tree of
`personae.backends._grammar`); `personae.backends._strict` rewrites a schema for hosted APIs'
strict structured-output mode.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from typing import Any

from personae.backends._grammar import (
    BLOCK,
    CAP,
    CHAR,
    DIGIT,
    Lit,
    Node,
    Ref,
    alt,
    gbnf,
    has_repetition,
    integer_range,
    natural_range,
    references,
    regex,
    rep,
    seq,
)
from personae.backends._grammar import DEFAULT_MAX_DIGITS as DEFAULT_MAX_DIGITS

#: Characters allowed in a string that has no `maxLength`.
DEFAULT_MAX_STRING_LENGTH = 500
#: Items allowed in an array that has no `maxItems`.
DEFAULT_MAX_ITEMS = 20
#: Digits allowed after a number's decimal point.
FRACTION_DIGITS = 6
#: Objects or arrays a free-form value (a schema that does not say its shape) may nest.
DEFAULT_MAX_DEPTH = 3

# Keywords that describe a value without constraining it.
_ANNOTATIONS = frozenset(
    ("title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly")
) | {"$comment"}
_ROOT_ONLY = frozenset({"$defs", "$schema", "$id"})
_ALLOWED = {
    "object": frozenset({"type", "properties", "required", "additionalProperties"}),
    "array": frozenset({"type", "items", "minItems", "maxItems"}),
    "string": frozenset({"type", "minLength", "maxLength"}),
    "integer": frozenset({"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
    "number": frozenset({"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
    "boolean": frozenset({"type"}),
    "null": frozenset({"type"}),
}


# --- schema walking ---------------------------------------------------------------------


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _rule_name(hint: str) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "-", hint).strip("-") or "value"
    return f"k{name}" if name[0].isdigit() else name


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Builder:
    """Walks one schema, collecting grammar rules; raises `ValueError` outside the subset."""

    def __init__(self, schema: Any) -> None:
        if not isinstance(schema, dict):
            raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
        self.schema = schema
        defs = schema.get("$defs", {})
        if not isinstance(defs, dict):
            raise ValueError("#/$defs: must be an object mapping names to schemas")
        self.defs: dict[str, Any] = defs
        self.rules: dict[str, Node] = {}
        self.used: set[str] = {"root"}
        self.def_rules: dict[str, str] = {}
        self.expanding: list[str] = []
        self.any_rules: dict[int, Ref] = {}

    def build(self) -> Node:
        self.rules["root"] = self.value(self.schema, "#", "root")
        return self.rules["root"]

    def rule(self, hint: str, node: Node) -> Ref:
        if isinstance(node, Ref):
            return node
        base = _rule_name(hint)
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}-{n}"
        self.used.add(name)
        self.rules[name] = node
        return Ref(name)

    @staticmethod
    def only(schema: dict[str, Any], allowed: frozenset[str], where: str, what: str) -> None:
        extra = [k for k in schema if k not in allowed and k not in _ANNOTATIONS]
        if where == "#":
            extra = [k for k in extra if k not in _ROOT_ONLY]
        if extra:
            raise ValueError(f"{where}: unsupported keyword {extra[0]!r} in {what} schema")

    def value(self, schema: Any, where: str, hint: str) -> Node:
        if not isinstance(schema, dict):
            raise ValueError(f"{where}: unsupported schema {schema!r} (expected an object)")
        if "$ref" in schema:
            self.only(schema, frozenset({"$ref"}), where, "a $ref")
            return self.ref(schema["$ref"], where)
        if "allOf" in schema:
            self.only(schema, frozenset({"allOf"}), where, "an allOf")
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise ValueError(f"{where}: unsupported allOf with several schemas")
            return self.value(parts[0], f"{where}/allOf/0", hint)
        if "anyOf" in schema:
            self.only(schema, frozenset({"anyOf"}), where, "an anyOf")
            options = schema["anyOf"]
            if not isinstance(options, list) or not options:
                raise ValueError(f"{where}: anyOf must be a non-empty list of schemas")
            return alt(*(self.value(o, f"{where}/anyOf/{i}", hint) for i, o in enumerate(options)))
        if "const" in schema:
            self.only(schema, frozenset({"const", "type"}), where, "a const")
            return Lit(self.literal(schema["const"], where))
        if "enum" in schema:
            self.only(schema, frozenset({"enum", "type"}), where, "an enum")
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: enum must be a non-empty list")
            return alt(*(Lit(self.literal(v, where)) for v in values))
        kind = schema.get("type")
        if kind is None:
            self.only(schema, frozenset(), where, "an untyped")
            return self.any_value(DEFAULT_MAX_DEPTH)
        if not isinstance(kind, str) or kind not in _ALLOWED:
            raise ValueError(
                f"{where}: unsupported type {kind!r} (write a list of types as anyOf)"
                if isinstance(kind, list)
                else f"{where}: unsupported type {kind!r}"
            )
        self.only(schema, _ALLOWED[kind], where, f"a {kind}")
        build: Callable[[dict[str, Any], str, str], Node] = getattr(self, f"_{kind}")
        return build(schema, where, hint)

    def literal(self, value: Any, where: str) -> str:
        try:
            return _compact(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: enum/const value {value!r} is not JSON") from exc

    def ref(self, ref: Any, where: str) -> Ref:
        if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
            raise ValueError(f"{where}: unsupported $ref {ref!r} (only '#/$defs/NAME' is)")
        name = ref[len("#/$defs/") :].replace("~1", "/").replace("~0", "~")
        if name not in self.defs:
            raise ValueError(f"{where}: $ref {ref!r} names no entry of $defs")
        if ref in self.expanding:
            raise ValueError(
                f"{where}: recursive $ref {ref!r} allows unbounded nesting; unsupported"
            )
        if ref not in self.def_rules:
            self.expanding.append(ref)
            try:
                node = self.value(self.defs[name], f"#/$defs/{name}", name)
            finally:
                self.expanding.pop()
            self.def_rules[ref] = self.rule(name, node).name
        return Ref(self.def_rules[ref])

    def _object(self, schema: dict[str, Any], where: str, hint: str) -> Node:
        properties = schema.get("properties")
        extra = schema.get("additionalProperties", properties is None)
        if not isinstance(extra, bool | dict):
            raise ValueError(f"{where}: additionalProperties must be a boolean or a schema")
        if properties is None:
            if extra is False:
                return Lit("{}")
            value = (
                self.rule(f"{hint}-value", self.value(extra, f"{where}/additionalProperties", hint))
                if isinstance(extra, dict)
                else self.any_value(DEFAULT_MAX_DEPTH - 1)
            )
            return self.members(value)
        if not isinstance(properties, dict):
            raise ValueError(f"{where}: properties must be an object mapping names to schemas")
        # Only the declared properties are written, which any additionalProperties allows.
        parts: list[Node] = [Lit("{")]
        for i, (key, sub) in enumerate(properties.items()):
            child = f"{hint}-{key}" if hint != "root" else str(key)
            node = self.value(sub, f"{where}/properties/{key}", child)
            parts += [Lit(("," if i else "") + _compact(str(key)) + ":"), self.rule(child, node)]
        parts.append(Lit("}"))
        return seq(*parts)

    def _array(self, schema: dict[str, Any], where: str, hint: str) -> Node:
        low, high = self.bounds(schema, "minItems", "maxItems", DEFAULT_MAX_ITEMS, where)
        if high == 0:
            return Lit("[]")
        if "items" in schema:
            node = self.value(schema["items"], f"{where}/items", hint)
            item = self.rule(f"{hint}-item", node)
        else:
            item = self.any_value(DEFAULT_MAX_DEPTH - 1)
        return self.list("[", item, low, high, "]", hint)

    def list(self, open_: str, item: Node, low: int, high: int, close: str, hint: str) -> Node:
        """`item`s between `open_` and `close`, comma-separated, `low` to `high` of them."""
        if high == 0:
            return Lit(open_ + close)
        if has_repetition(item):
            item = self.rule(hint, item)
        more = self.repeat(seq(Lit(","), item), max(low - 1, 0), high - 1, hint)
        body = seq(item, more)
        return seq(Lit(open_), body if low else rep(body, 0, 1), Lit(close))

    def repeat(self, item: Node, low: int, high: int, hint: str) -> Node:
        """`item` `low` to `high` times, in a shape llama.cpp's grammar parser takes.

        llama.cpp copies the rules inside `x{m,n}` n times and refuses a grammar once that
        product reaches 2000, so an item with repetitions of its own becomes a rule, and a run
        longer than `BLOCK` is counted in whole blocks plus a remainder (one parse per length).
        """
        if high > 1 and has_repetition(item):
            item = self.rule(hint, item)
        if high <= BLOCK:
            return rep(item, low, high)
        block = self.rule(f"{hint}-{BLOCK}", rep(item, BLOCK, BLOCK))
        whole, rest = divmod(low, BLOCK)
        exactly_low = seq(rep(block, whole, whole), rep(item, rest, rest))
        blocks, tail = divmod(high - low, BLOCK)
        up_to = rep(item, 0, tail)
        if blocks:
            shorter = seq(rep(block, 0, blocks - 1), rep(item, 0, BLOCK - 1))
            up_to = alt(shorter, seq(rep(block, blocks, blocks), up_to))
        return seq(exactly_low, up_to)

    def members(self, value: Ref) -> Node:
        """A free-form object: up to DEFAULT_MAX_ITEMS string keys, each with `value`."""
        key = self._string({}, "", "key")
        member = seq(key, Lit(":"), value)
        return self.list("{", member, 0, DEFAULT_MAX_ITEMS, "}", f"{value.name}-member")

    def any_value(self, depth: int) -> Ref:
        """Any JSON value nesting at most `depth` objects or arrays, with the default caps."""
        if depth not in self.any_rules:
            options = [self._string({}, "", ""), self._number({}, "", "")]
            options += [Lit("true"), Lit("false"), Lit("null")]
            if depth > 0:
                inner = self.any_value(depth - 1)
                array = self.list("[", inner, 0, DEFAULT_MAX_ITEMS, "]", inner.name)
                options += [self.members(inner), array]
            self.any_rules[depth] = self.rule(f"json-value-{depth}", alt(*options))
        return self.any_rules[depth]

    def _string(self, schema: dict[str, Any], where: str, hint: str) -> Node:
        low, high = self.bounds(schema, "minLength", "maxLength", DEFAULT_MAX_STRING_LENGTH, where)
        return seq(Lit('"'), self.repeat(CHAR, low, high, f"{hint}-chars"), Lit('"'))

    @staticmethod
    def bounds(
        schema: dict[str, Any], low_key: str, high_key: str, default: int, where: str
    ) -> tuple[int, int]:
        low, high = schema.get(low_key, 0), schema.get(high_key)
        for key, value in ((low_key, low), (high_key, high)):
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"{where}: {key} must be a non-negative integer")
        high = max(default, low) if high is None else high
        if low > high:
            raise ValueError(f"{where}: {low_key} {low} exceeds {high_key} {high}")
        return low, high

    @staticmethod
    def limits(schema: dict[str, Any], where: str) -> tuple[float | None, bool, float | None, bool]:
        """(low, low is exclusive, high, high is exclusive); None for an open side."""

        def side(
            key: str, exclusive_key: str, tighter: Callable[[float, float], float]
        ) -> tuple[float | None, bool]:
            value, exclusive = schema.get(key), schema.get(exclusive_key)
            for k, v in ((key, value), (exclusive_key, exclusive)):
                if v is not None and not _is_number(v):
                    raise ValueError(f"{where}: {k} must be a number, got {v!r}")
            if exclusive is not None and (value is None or tighter(exclusive, value) == exclusive):
                return exclusive, True
            return value, False

        low, low_exclusive = side("minimum", "exclusiveMinimum", max)
        high, high_exclusive = side("maximum", "exclusiveMaximum", min)
        if (low is not None and high is not None) and (
            low > high or (low == high and (low_exclusive or high_exclusive))
        ):
            raise ValueError(f"{where}: no number lies within the bounds")
        return low, low_exclusive, high, high_exclusive

    def _integer(self, schema: dict[str, Any], where: str, hint: str) -> Node:
        low, low_ex, high, high_ex = self.limits(schema, where)
        first = None if low is None else math.floor(low) + 1 if low_ex else math.ceil(low)
        last = None if high is None else math.ceil(high) - 1 if high_ex else math.floor(high)
        if first is None:
            first = min(-CAP, last or 0)
        if last is None:
            last = max(CAP, first)
        if first > last:
            raise ValueError(f"{where}: no integer lies within the bounds")
        return integer_range(first, last)

    def _number(self, schema: dict[str, Any], where: str, hint: str) -> Node:
        low, _, high, _ = self.limits(schema, where)
        # Rounded outward, so the language holds every number within the bounds.
        first = None if low is None else math.floor(low)
        last = None if high is None else math.ceil(high)
        fraction = rep(seq(Lit("."), rep(DIGIT, 1, FRACTION_DIGITS)), 0, 1)
        zeros = rep(seq(Lit("."), rep(Lit("0"), 1, FRACTION_DIGITS)), 0, 1)

        def magnitudes(smallest: int, largest: int | None) -> list[Node]:
            # Numbers i.f with smallest <= i, and i.f <= largest: i < largest, or i == largest
            # with f == 0; no upper limit but the digit cap when largest is None.
            if largest is None:
                return [seq(alt(*natural_range(smallest, max(CAP, smallest))), fraction)]
            out = []
            if smallest <= largest - 1:
                out.append(seq(alt(*natural_range(smallest, largest - 1)), fraction))
            if smallest <= largest:
                out.append(seq(Lit(str(largest)), zeros))
            return out

        options: list[Node] = []
        if last is None or last >= 0:
            options += magnitudes(max(first or 0, 0), last)
        if first is None or first < 0:
            negative = magnitudes(
                max(-last, 0) if last is not None else 0, None if first is None else -first
            )
            options.append(seq(Lit("-"), alt(*negative)))
        return alt(*options)

    def _boolean(self, schema: dict[str, Any], where: str, hint: str) -> Node:
        return alt(Lit("true"), Lit("false"))

    def _null(self, schema: dict[str, Any], where: str, hint: str) -> Node:
        return Lit("null")


@functools.lru_cache(maxsize=256)
def _compiled(schema_json: str) -> tuple[str, str]:
    builder = _Builder(json.loads(schema_json))
    root = builder.build()
    order, pending = [], ["root"]
    while pending:
        name = pending.pop(0)
        if name in order:
            continue
        order.append(name)
        pending += references(builder.rules[name])
    grammar = "".join(f"{name} ::= {gbnf(builder.rules[name])}\n" for name in order)
    return grammar, regex(root, builder.rules)


def _key(schema: dict[str, Any]) -> str:
    try:
        return json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the JSON schema is not JSON-serialisable: {exc}") from exc


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """A GBNF grammar accepting exactly the compact JSON of values valid under `schema`.

    See the module docstring for the exact shape and the supported subset of JSON Schema.

    Args:
        schema: A JSON schema, e.g. `Model.model_json_schema()` of a pydantic model.

    Returns:
        The grammar text, one rule per line, starting with `root`.

    Raises:
        ValueError: The schema uses a construct outside the supported subset (the message
            names it and its location), or has no value at all (empty ranges).
    """
    return _compiled(_key(schema))[0]


def json_schema_regex(schema: dict[str, Any]) -> str:
    """The language of `json_schema_grammar(schema)` as a Python regular expression.

    Use it with `re.fullmatch`; it accepts the same texts as the grammar.

    Raises:
        ValueError: As `json_schema_grammar`.
    """
    return _compiled(_key(schema))[1]
