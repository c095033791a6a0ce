"""The cognitive conceptualization diagram (CCD): the cognitive model of a client, as a
counselor infers it, and the closed lists it is written with.

`CognitiveModel` has the fields of a `ClientProfile` (PATIENT-Ψ): core beliefs as categories
(helpless / unlovable / worthless) and items from Beck's closed lists, emotions from the nine
categories, and free text for history, intermediate beliefs (also during depression), coping
strategies, the situation, its automatic thoughts and the behaviour. `reference_model` is what a
profile says for each field; `load_ccd` reads a submission (YAML), refusing a value off a closed
list with one line naming the field and the valid values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from personae._yaml import load_yaml
from personae.agents._ccd_lists import (
    CATEGORIES,
    CLOSED,
    CORE_BELIEFS,
    CoreBeliefCategory,
    CoreBeliefItem,
    EmotionCategory,
)
from personae.agents._personas import ClientProfile, Strict
from personae.errors import UserError

#: The free-text fields of a CCD, in form order.
FREE_TEXT: tuple[str, ...] = (
    "history",
    "intermediate_beliefs",
    "intermediate_beliefs_during_depression",
    "coping_strategies",
    "situation",
    "automatic_thoughts",
    "behavior",
)
assert set(CORE_BELIEFS) == set(CATEGORIES)
assert sum(map(len, CORE_BELIEFS.values())) == len(CLOSED["core_beliefs"])


def _text(limit: int) -> Any:
    return Field("", max_length=limit)


class CognitiveModel(Strict):
    """A CCD: closed lists as their labels, free text as one string per field."""

    core_belief_categories: list[CoreBeliefCategory] = Field(default_factory=list, max_length=3)
    core_beliefs: list[CoreBeliefItem] = Field(default_factory=list, max_length=6)
    emotions: list[EmotionCategory] = Field(default_factory=list, max_length=5)
    history: str = _text(300)
    intermediate_beliefs: str = _text(300)
    intermediate_beliefs_during_depression: str = _text(300)
    coping_strategies: str = _text(300)
    situation: str = _text(300)
    automatic_thoughts: str = _text(300)
    behavior: str = _text(300)

    @field_validator("core_belief_categories", "core_beliefs", "emotions", mode="after")
    @classmethod
    def _once(cls, values: list[str]) -> list[str]:
        """Each label once, in first-given order (a model may repeat one)."""
        return list(dict.fromkeys(values))

    def value(self, name: str) -> list[str] | str:
        """Field `name` (a list for a closed list, else its text)."""
        found: list[str] | str = getattr(self, name)
        return found


def category_of(item: str) -> str:
    """The core-belief category an item of the closed lists belongs to."""
    return next(c for c, items in CORE_BELIEFS.items() if item in items)


def reference_model(profile: ClientProfile) -> CognitiveModel:
    """What `profile` says for each CCD field (core-belief categories: those it has beliefs
    in; lists of free text joined with `; `)."""
    data: dict[str, Any] = {
        "core_belief_categories": [c for c in CATEGORIES if getattr(profile.core_beliefs, c)],
        "core_beliefs": list(profile.core_belief_items),
        "emotions": list(profile.emotion_categories),
    }
    for name in FREE_TEXT:
        value = getattr(profile, name)
        data[name] = "; ".join(value) if isinstance(value, list) else value
    return CognitiveModel.model_construct(**data)


def _label(value: Any, options: tuple[str, ...]) -> str | None:
    """`value` as one of `options`: the option itself (case and a final period aside) or its
    number in the list (1-based), else None."""
    text = str(value).strip()
    if text.isdigit() and 1 <= int(text) <= len(options):
        return options[int(text) - 1]
    key = text.lower().rstrip(".")
    return next((o for o in options if o.lower().rstrip(".") == key), None)


def parse_ccd(data: Any, where: str) -> CognitiveModel:
    """A CCD from a mapping (a YAML file's content, a filled-in form); closed lists may give
    labels or their numbers. Core-belief categories default to those of the items.

    Raises:
        UserError: not a mapping, an unknown field, a value off a closed list (naming the
            field and the valid values) or text too long.
    """
    if not isinstance(data, dict):
        raise UserError(
            "a CCD must be a mapping of fields", where=where, fix=f"fields: {_fields()}"
        )
    known = set(CLOSED) | set(FREE_TEXT)
    unknown = [k for k in data if k not in known]
    if unknown:
        raise UserError(
            f"unknown CCD field {unknown[0]!r}", where=where, fix=f"fields: {_fields()}"
        )
    clean: dict[str, Any] = {}
    for name, options in CLOSED.items():
        given = data.get(name) or []
        values = [given] if isinstance(given, str | int) else list(given)
        labels = []
        for value in values:
            label = _label(value, options)
            if label is None:
                raise UserError(
                    f"{value!r} is not a valid value of {name}",
                    where=f"{where}: {name}",
                    fix="use one of: " + "; ".join(options),
                )
            labels.append(label)
        clean[name] = list(dict.fromkeys(labels))
    if not clean["core_belief_categories"]:
        clean["core_belief_categories"] = list(
            dict.fromkeys(category_of(i) for i in clean["core_beliefs"])
        )
    for name in FREE_TEXT:
        value = data.get(name) or ""
        clean[name] = "; ".join(map(str, value)) if isinstance(value, list) else str(value)
    try:
        return CognitiveModel.model_validate(clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(
            f"bad CCD value: {first['msg']}", where=f"{where}: {field}", fix="shorten or fix it"
        ) from None


def load_ccd(path: str | Path) -> CognitiveModel:
    """Read and check a CCD submission file (YAML; see `parse_ccd`)."""
    source = Path(path)
    return parse_ccd(load_yaml(source, "CCD file"), str(source))


def _fields() -> str:
    return ", ".join([*CLOSED, *FREE_TEXT])


def jaccard(a: list[str] | tuple[str, ...], b: list[str] | tuple[str, ...]) -> float:
    """Size of the intersection over size of the union (1.0 when both are empty)."""
    left, right = set(a), set(b)
    union = left | right
    return len(left & right) / len(union) if union else 1.0
