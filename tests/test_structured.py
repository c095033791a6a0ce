"""Bounded structured output: the grammar's text, the language it accepts (checked through the
equivalent regex), what each engine is sent, and the real model decoding under it."""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import pytest
import pytest_asyncio
from pydantic import BaseModel, Field, StringConstraints, create_model

from personae.backends import EmbeddedBackend, GenerationRequest, json_schema_grammar
from personae.backends._openai import OpenAIBackend
from personae.backends._strict import strict_json_schema
from personae.backends._structured import (
    DEFAULT_MAX_DIGITS,
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_STRING_LENGTH,
    FRACTION_DIGITS,
    json_schema_regex,
)

Score = Literal[1, 2, 3, 4, 5]
Rating = create_model(
    "Rating",
    empathy=(Score, ...),
    clarity=(Score, ...),
    rationale=(Annotated[str, StringConstraints(max_length=120)], ...),
)
RATING = Rating.model_json_schema()


class Mood(enum.StrEnum):
    calm = "calm"
    upset = "upset"


class Turn(BaseModel):
    index: int = Field(ge=0, le=40)
    flagged: bool


class Review(BaseModel):
    mood: Mood
    first: Turn = Field(description="the opening turn")
    worst: Turn | None = None
    warmth: float = Field(ge=0, le=1)
    delta: int = Field(gt=-10, lt=10)
    kind: Literal["review"]
    quotes: list[Annotated[str, StringConstraints(min_length=1, max_length=12)]] = Field(
        max_length=3
    )
    ids: list[int] = Field(min_length=1)
    note: str | None = None
    either: int | str
    meta: dict[str, Any]
    counts: dict[str, Annotated[int, Field(ge=0, le=9)]]


REVIEW = Review.model_json_schema()


def accepts(schema: dict[str, Any], text: str) -> bool:
    return re.fullmatch(json_schema_regex(schema), text) is not None


# --- the grammar text --------------------------------------------------------------------


def test_rubric_grammar_is_compact_ordered_and_bounded() -> None:
    assert json_schema_grammar(RATING) == (
        'root ::= "{\\"empathy\\":" empathy ",\\"clarity\\":" clarity ",\\"rationale\\":" '
        'rationale "}"\n'
        'empathy ::= "1" | "2" | "3" | "4" | "5"\n'
        'clarity ::= "1" | "2" | "3" | "4" | "5"\n'
        'rationale ::= "\\"" [^"\\\\\\x7F\\x00-\\x1F\\uD800-\\uDFFF]{0,120} "\\""\n'
    )


def test_defs_become_shared_rules_and_optional_fields_allow_null() -> None:
    class Inner(BaseModel):
        score: int = Field(ge=0, le=10)

    class Outer(BaseModel):
        mood: Mood
        a: Inner = Field(description="same definition, sibling keyword")
        b: Inner | None = None
        tags: list[str] = Field(max_length=2)

    assert json_schema_grammar(Outer.model_json_schema()).splitlines() == [
        'root ::= "{\\"mood\\":" Mood ",\\"a\\":" Inner ",\\"b\\":" b ",\\"tags\\":" tags "}"',
        'Mood ::= "\\"calm\\"" | "\\"upset\\""',
        'Inner ::= "{\\"score\\":" Inner-score "}"',
        'b ::= Inner | "null"',
        'tags ::= "[" (tags-item ("," tags-item)?)? "]"',
        'Inner-score ::= [0-9] | "10"',
        'tags-item ::= "\\"" [^"\\\\\\x7F\\x00-\\x1F\\uD800-\\uDFFF]{0,500} "\\""',
    ]


def test_odd_property_names_are_escaped_keys_and_plain_rule_names() -> None:
    names = ['say "hi"', "back\\slash", "ключ", "2nd", "root", "a-b_c.d"]
    schema = {"type": "object", "properties": {name: {"type": "boolean"} for name in names}}
    grammar = json_schema_grammar(schema)
    rules = [line.split(" ::= ")[0] for line in grammar.splitlines()]
    assert len(set(rules)) == len(rules) == len(names) + 1
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", rule) for rule in rules), rules
    value = {name: i % 2 == 0 for i, name in enumerate(names)}
    assert accepts(schema, json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def test_every_grammar_has_no_unbounded_repetition() -> None:
    for schema in (RATING, REVIEW, {}, {"type": "object"}, {"type": "array"}):
        grammar = json_schema_grammar(schema)
        assert not re.search(r"[*+]|\{\d+,\}", grammar), grammar


# --- what the grammar accepts -------------------------------------------------------------


def test_pydantic_rejects_nothing_the_rubric_grammar_accepts_and_vice_versa() -> None:
    good = '{"empathy":4,"clarity":2,"rationale":"Warm, but the question was vague."}'
    assert accepts(RATING, good)
    Rating.model_validate_json(good)
    near_misses = [
        '{"empathy": 4,"clarity":2,"rationale":"ok"}',  # a space after ':'
        '{"empathy":4, "clarity":2,"rationale":"ok"}',  # a space after ','
        '{"empathy":4,"clarity":2,"rationale":"ok"}\n',  # trailing newline
        json.dumps({"empathy": 4, "clarity": 2, "rationale": "ok"}, indent=2),
        '{"clarity":2,"empathy":4,"rationale":"ok"}',  # keys out of order
        '{"empathy":4,"rationale":"ok"}',  # a key missing
        '{"empathy":4,"clarity":2,"rationale":"ok","extra":1}',
        '{"empathy":6,"clarity":2,"rationale":"ok"}',
        '{"empathy":"4","clarity":2,"rationale":"ok"}',
        '{"empathy":4,"clarity":2,"rationale":"' + "x" * 121 + '"}',
        '{"empathy":4,"clarity":2,"rationale":"a \\"quote\\""}',
        '{"empathy":4,"clarity":2,"rationale":"two\\nlines"}',
        '{"empathy":4,"clarity":2,"rationale":"two\nlines"}',
    ]
    for text in near_misses:
        assert not accepts(RATING, text), text
    assert accepts(RATING, '{"empathy":4,"clarity":2,"rationale":"' + "x" * 120 + '"}')


def test_strings_and_arrays_without_a_bound_get_the_default_caps() -> None:
    text = {"type": "string"}
    assert accepts(text, '"' + "é" * DEFAULT_MAX_STRING_LENGTH + '"')
    assert not accepts(text, '"' + "é" * (DEFAULT_MAX_STRING_LENGTH + 1) + '"')
    items = {"type": "array", "items": {"type": "boolean"}}
    assert accepts(items, "[" + ",".join(["true"] * DEFAULT_MAX_ITEMS) + "]")
    assert not accepts(items, "[" + ",".join(["true"] * (DEFAULT_MAX_ITEMS + 1)) + "]")
    assert accepts(items, "[]") and not accepts(items, "[true,]")


def test_long_strings_are_counted_in_blocks_without_losing_a_length() -> None:
    schema = {"type": "string", "minLength": 1500, "maxLength": 3500}
    counts = re.findall(r"\{(?:\d+,)?(\d+)\}", json_schema_grammar(schema))
    assert max(map(int, counts)) == 1000  # no run llama.cpp would refuse (2000 and up)
    pattern = re.compile(json_schema_regex(schema))
    lengths = [n for n in range(1400, 3600) if pattern.fullmatch('"' + "a" * n + '"')]
    assert lengths == list(range(1500, 3501))


def test_integer_ranges_are_exact() -> None:
    rng = random.Random(5)
    cases = [(lo, lo + d) for lo in range(-130, 131, 7) for d in (0, 1, 9, 10, 11, 99, 100, 250)]
    cases += [tuple(sorted(rng.randint(-(10**7), 10**7) for _ in range(2))) for _ in range(150)]
    for lo, hi in cases:
        pattern = re.compile(json_schema_regex({"type": "integer", "minimum": lo, "maximum": hi}))
        probes = set(range(lo - 12, lo + 12)) | set(range(hi - 12, hi + 12))
        probes |= {rng.randint(lo - 1000, hi + 1000) for _ in range(60)}
        for v in probes:
            assert (pattern.fullmatch(str(v)) is not None) == (lo <= v <= hi), (lo, hi, v)
    small = {"type": "integer", "minimum": 0, "maximum": 100}
    assert not any(accepts(small, t) for t in ("007", "-0", "+1", "1.0", "1e1", " 1"))


def test_integer_exclusive_and_open_bounds() -> None:
    exclusive = {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}
    assert [v for v in range(-5, 15) if accepts(exclusive, str(v))] == list(range(1, 10))
    tighter = {"type": "integer", "minimum": 3, "exclusiveMinimum": 1, "maximum": 5}
    assert [v for v in range(10) if accepts(tighter, str(v))] == [3, 4, 5]
    biggest = "9" * DEFAULT_MAX_DIGITS
    for text in (biggest, "-" + biggest, "0", "-1"):
        assert accepts({"type": "integer"}, text)
    assert not accepts({"type": "integer"}, "1" + "0" * DEFAULT_MAX_DIGITS)
    assert accepts({"type": "integer", "minimum": 7}, biggest)
    assert not accepts({"type": "integer", "minimum": 7}, "6")


@pytest.mark.parametrize("lo, hi", [(0, 1), (1, 5), (-5, 3), (-7, -2), (0, 0), (-100, 100)])
def test_numbers_with_integral_bounds_are_exact(lo: int, hi: int) -> None:
    rng = random.Random(lo * 31 + hi)
    pattern = re.compile(json_schema_regex({"type": "number", "minimum": lo, "maximum": hi}))
    for _ in range(400):
        digits = rng.randint(0, FRACTION_DIGITS)
        text = f"{rng.uniform(lo - 3, hi + 3):.{digits}f}"
        if text.startswith("-") and float(text) == 0:
            continue  # "-0.00" is a valid spelling of zero either way
        assert (pattern.fullmatch(text) is not None) == (lo <= float(text) <= hi), text
    for text in (f"{hi}.{'0' * FRACTION_DIGITS}", str(lo), str(hi)):
        assert pattern.fullmatch(text), text
    too_precise = "0." + "1" * (FRACTION_DIGITS + 1)
    for text in ("1e0", ".5", "1.", "01.5", too_precise, str(hi + 0.5), str(lo - 0.5)):
        assert not pattern.fullmatch(text), text


def test_numbers_with_fractional_or_exclusive_bounds_accept_all_within() -> None:
    schema = {"type": "number", "exclusiveMinimum": 0.5, "maximum": 2.25}
    rng = random.Random(2)
    for _ in range(300):
        x = round(rng.uniform(0.5001, 2.25), rng.randint(1, 4))
        assert accepts(schema, repr(x)), x
    assert not accepts(schema, "3.5") and not accepts(schema, "-1")


def _random_instance(schema: dict[str, Any], root: dict[str, Any], rng: random.Random) -> Any:
    """A value valid under `schema`, drawn at random (only the subset the grammar supports)."""
    if "$ref" in schema:
        return _random_instance(root["$defs"][schema["$ref"].split("/")[-1]], root, rng)
    if "anyOf" in schema:
        return _random_instance(rng.choice(schema["anyOf"]), root, rng)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        if "properties" in schema:
            return {k: _random_instance(v, root, rng) for k, v in schema["properties"].items()}
        value = schema.get("additionalProperties")
        sub = value if isinstance(value, dict) else {"type": rng.choice(["string", "integer"])}
        return {_random_text(rng, 0, 8): _random_instance(sub, root, rng) for _ in range(3)}
    if kind == "array":
        low, high = schema.get("minItems", 0), schema.get("maxItems", DEFAULT_MAX_ITEMS)
        n = rng.randint(low, high)
        return [_random_instance(schema["items"], root, rng) for _ in range(n)]
    if kind == "string":
        high = schema.get("maxLength", DEFAULT_MAX_STRING_LENGTH)
        return _random_text(rng, schema.get("minLength", 0), high)
    if kind == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -(10**9)) + 1)
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 10**9) - 1)
        return rng.randint(lo, hi)
    if kind == "number":
        x = round(rng.uniform(schema.get("minimum", -1e6), schema.get("maximum", 1e6)), 4)
        return 0.0 if abs(x) < 1e-3 else x  # pydantic writes tiny floats with an exponent
    if kind == "boolean":
        return rng.random() < 0.5
    assert kind == "null", schema
    return None


def _random_text(rng: random.Random, low: int, high: int) -> str:
    alphabet = "abcxyz ABC 019 .,;:!?'-_()[]{}/<>#@&*+=~` éüß 中文 🙂"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


@pytest.mark.parametrize("model", [Rating, Review])
def test_what_pydantic_writes_is_accepted(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    pattern = re.compile(json_schema_regex(schema))
    rng = random.Random(11)
    for _ in range(300):
        text = model.model_validate(_random_instance(schema, schema, rng)).model_dump_json()
        assert pattern.fullmatch(text), text


def test_free_form_values_are_bounded_json() -> None:
    rng = random.Random(3)
    for _ in range(100):
        value = {
            _random_text(rng, 0, 5): rng.choice([1, -2.5, "x", None, True, [1, {"a": 2}], {}, []])
            for _ in range(rng.randint(0, 5))
        }
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        assert accepts({"type": "object"}, text) and accepts({}, text), text
    assert not accepts({"type": "object"}, '{"a":{"b":{"c":{"d":1}}}}')  # deeper than the cap
    assert accepts({"type": "object"}, '{"a":{"b":{"c":1}}}')
    assert not accepts({"type": "object"}, '{"a": 1}')


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "string", "pattern": "^a"}, "#: unsupported keyword 'pattern'"),
        (create_model("M", when=(datetime.date, ...)).model_json_schema(), "'format'"),
        (create_model("M", tags=(set[str], ...)).model_json_schema(), "'uniqueItems'"),
        (create_model("M", pair=(tuple[int, str], ...)).model_json_schema(), "'prefixItems'"),
        ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, "'oneOf'"),
        ({"type": ["string", "null"]}, "unsupported type ['string', 'null']"),
        ({"type": "integer", "multipleOf": 5}, "'multipleOf'"),
        ({"allOf": [{"type": "integer"}, {"minimum": 1}]}, "allOf with several"),
        ({"$ref": "other.json#/Thing"}, "unsupported $ref 'other.json#/Thing'"),
        ({"$ref": "#/$defs/Missing"}, "names no entry"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "no number lies within"),
        ({"type": "integer", "minimum": 1.2, "maximum": 1.8}, "no integer lies within"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength 5 exceeds maxLength 2"),
        ({"type": "array", "items": {"type": "date"}}, "#/items: unsupported type 'date'"),
        ({"enum": []}, "non-empty"),
    ],
)
def test_constructs_outside_the_subset_are_named(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        json_schema_grammar(schema)


def test_recursive_models_are_refused() -> None:
    class Node(BaseModel):
        label: str
        children: list[Node]

    with pytest.raises(ValueError, match=r"#/\$defs/Node/properties/children/items: recursive"):
        json_schema_grammar(Node.model_json_schema())


def test_unsupported_keywords_name_their_place() -> None:
    schema = create_model("M", code=(Annotated[str, StringConstraints(pattern="^[A-Z]+$")], ...))
    with pytest.raises(ValueError, match=r"#/properties/code: unsupported keyword 'pattern'"):
        json_schema_grammar(schema.model_json_schema())


# --- strict schemas for hosted APIs ---------------------------------------------------------


def test_strict_schema_requires_every_property_and_forbids_others() -> None:
    class Plain(BaseModel):
        mood: Mood
        first: Turn = Field(description="the opening turn")
        worst: Turn | None = None

    strict = strict_json_schema(Plain.model_json_schema())
    assert strict is not None
    assert strict["required"] == ["mood", "first", "worst"]
    assert strict["additionalProperties"] is False
    assert strict["$defs"]["Turn"]["additionalProperties"] is False
    first = strict["properties"]["first"]
    assert "$ref" not in first and first["description"] == "the opening turn"
    assert first["required"] == ["index", "flagged"] and first["additionalProperties"] is False
    assert "default" not in strict["properties"]["worst"]
    assert strict_json_schema({"type": "object"}) is None
    assert "additionalProperties" not in Plain.model_json_schema()  # the input is untouched


# --- what each engine is sent ---------------------------------------------------------------


def test_embedded_sends_the_grammar_not_the_schema() -> None:
    body = EmbeddedBackend()._payload(GenerationRequest(prompt="Rating:", json_schema=RATING))
    assert body["grammar"] == json_schema_grammar(RATING)
    assert "json_schema" not in body and "response_format" not in body


def test_openai_dialects_send_bounded_constraints() -> None:
    request = GenerationRequest(prompt="Rating:", json_schema=RATING)
    llamacpp = OpenAIBackend("http://h/v1", model="m", structured="llamacpp").payload(request)
    assert llamacpp["grammar"] == json_schema_grammar(RATING) and "json_schema" not in llamacpp
    vllm = OpenAIBackend("http://h/v1", model="m", structured="vllm").payload(request)
    assert vllm["structured_outputs"] == {"grammar": json_schema_grammar(RATING)}
    hosted = OpenAIBackend("http://h/v1", model="m", structured="openai").payload(request)
    spec = hosted["response_format"]["json_schema"]
    assert spec["strict"] is True and spec["schema"] == strict_json_schema(RATING)
    free = OpenAIBackend("http://h/v1", model="m", structured="openai").payload(
        GenerationRequest(prompt="JSON:", json_schema={"type": "object"})
    )
    assert free["response_format"]["json_schema"] == {
        "name": "output",
        "schema": {"type": "object"},
    }


def test_an_unsupported_schema_fails_before_any_request() -> None:
    request = GenerationRequest(prompt="x", json_schema={"type": "string", "format": "email"})
    with pytest.raises(ValueError, match="'format'"):
        EmbeddedBackend()._payload(request)
    with pytest.raises(ValueError, match="'format'"):
        OpenAIBackend("http://h/v1", model="m", structured="vllm").payload(request)


# --- the real model -----------------------------------------------------------------------

JUDGE_PROMPT = (
    "Counselor: How have you been this week?\n"
    "Client: Not great. I keep arguing with my sister and I can't sleep.\n"
    "Counselor: That sounds exhausting. What usually happens when you argue?\n\n"
    "Rate the counselor's last turn for empathy (1-5) and clarity (1-5), with a one-sentence "
    "rationale, as JSON.\nRating: "
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[EmbeddedBackend]:
    async with EmbeddedBackend(n_parallel=4, ctx_per_slot=1024) as backend:
        yield backend


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_small_model_rubric_replies_always_validate_and_stop(engine: EmbeddedBackend) -> None:
    results = await asyncio.gather(
        *(
            engine.generate(
                GenerationRequest(
                    prompt=JUDGE_PROMPT,
                    json_schema=RATING,
                    temperature=1.0,
                    top_p=1.0,
                    seed=seed,
                    max_tokens=200,
                )
            )
            for seed in range(8)
        )
    )
    for result in results:
        assert result.finish_reason == "stop", result.text
        assert accepts(RATING, result.text), result.text
        Rating.model_validate_json(result.text)


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_llama_cpp_decodes_every_construct_within_the_language(
    engine: EmbeddedBackend,
) -> None:
    class Small(BaseModel):
        mood: Mood
        first: Turn
        worst: Turn | None = None
        warmth: float = Field(ge=0, le=1)
        delta: int = Field(gt=-10, lt=10)
        kind: Literal["review"]
        quotes: list[Annotated[str, StringConstraints(max_length=10)]] = Field(max_length=2)
        either: int | Annotated[str, StringConstraints(max_length=5)]

    schema = Small.model_json_schema()
    results = await asyncio.gather(
        *(
            engine.generate(
                GenerationRequest(
                    prompt="Review of the session as JSON:\n",
                    json_schema=schema,
                    temperature=1.0,
                    seed=seed,
                    max_tokens=300,
                )
            )
            for seed in range(4)
        )
    )
    for result in results:
        assert result.finish_reason == "stop", result.text
        assert accepts(schema, result.text), result.text
        Small.model_validate_json(result.text)
    odd = {
        "type": "object",
        "properties": {'say "hi"': {"type": "boolean"}, "ключ": {"type": "null"}},
    }
    result = await engine.generate(
        GenerationRequest(prompt="JSON:", json_schema=odd, temperature=1.0, seed=2, max_tokens=300)
    )
    assert result.finish_reason == "stop" and accepts(odd, result.text), result.text
    # The largest shapes parse within llama.cpp's repetition limit (2000 copied rules):
    # free-form JSON with every default cap, and a string longer than that limit.
    for schema in ({"type": "object"}, {"type": "string", "minLength": 5, "maxLength": 4500}):
        result = await engine.generate(
            GenerationRequest(prompt="{", json_schema=schema, max_tokens=8, seed=1)
        )
        assert result.completion_tokens > 0
