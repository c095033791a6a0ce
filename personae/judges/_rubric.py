"""Rubrics: what a judge rates and the bounded structured output it must produce.

A rubric has either **dimensions** (each a name, a description, an integer scale and optional
anchors per scale point) or a **code list** (one label per judged line). Dimensions become a
pydantic model whose JSON schema is sent to the engine (constrained decoding, bounded: integer
enums, a length-capped rationale) and whose validator checks the reply; a code list becomes a
constrained choice among the codes. With `choice: true` a code list is answered as JSON, a
length-capped rationale first and then the code — what a supervisor picking one of several
candidate replies answers (its codes are the candidates' ids, given by the seat it supervises).
`normalise: N` puts a dimension rubric's score on 0..N whatever the scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    model_validator,
)

_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Strict):
    """One rated dimension: an integer scale with optional anchors."""

    name: str = Field(pattern=_NAME, description="Key in the judgment's JSON.")
    description: str = ""
    scale: tuple[int, int] = Field((1, 5), description="Lowest and highest score.")
    anchors: dict[int, str] = Field(default_factory=dict, description="Meaning of some scores.")

    @model_validator(mode="after")
    def _check(self) -> Dimension:
        low, high = self.scale
        if not low < high or high - low > 100:
            raise ValueError(
                f"scale must be [low, high] with low < high (at most 101 points), "
                f"got {list(self.scale)}"
            )
        bad = [a for a in self.anchors if not low <= a <= high]
        if bad:
            raise ValueError(f"anchor {bad[0]} is outside the scale {low}..{high}")
        return self

    def values(self) -> tuple[int, ...]:
        """Every allowed score."""
        return tuple(range(self.scale[0], self.scale[1] + 1))

    def text(self) -> str:
        """The dimension as a rubric line."""
        low, high = self.scale
        anchors = "; ".join(f"{k} = {v}" for k, v in sorted(self.anchors.items()))
        desc = f": {self.description.strip()}" if self.description.strip() else ""
        return f"- {self.name} ({low} to {high}){desc}" + (f" ({anchors})" if anchors else "")


class Rubric(_Strict):
    """What a judge rates: `dimensions` (scores) or `codes` (one label), and instructions."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Stored with every judgment.")
    instructions: str = ""
    dimensions: list[Dimension] = Field(default_factory=list)
    codes: list[Annotated[str, StringConstraints(min_length=1, max_length=40)]] = Field(
        default_factory=list
    )
    rationale: int = Field(
        160, ge=0, le=1000, description="Characters of rationale before the scores (0: none)."
    )
    choice: bool = Field(
        False,
        description="Codes answered as JSON, the rationale first, then the code (a "
        "supervisor's rubric: its codes default to the candidates' ids).",
    )
    normalise: float | None = Field(
        None,
        gt=0,
        description="Score on 0..N: each dimension as (value - low) / (high - low) * N, "
        "averaged (default: the mean of the raw values).",
    )

    @model_validator(mode="after")
    def _check(self) -> Rubric:
        if self.choice:
            if self.dimensions:
                raise ValueError("a choice rubric has codes, not dimensions")
        elif not self.dimensions and not self.codes:
            raise ValueError("a rubric needs at least one dimension (or a list of codes)")
        if self.dimensions and self.codes:
            raise ValueError("a rubric has either dimensions or codes, not both")
        if self.normalise is not None and not self.dimensions:
            raise ValueError("normalise applies to a rubric with dimensions")
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names) or "rationale" in names:
            raise ValueError("dimension names must be distinct and not 'rationale'")
        if len(set(self.codes)) != len(self.codes):
            raise ValueError("codes must be distinct")
        return self

    @property
    def kind(self) -> Literal["scores", "codes", "choice"]:
        """`scores` (dimensions, JSON output), `codes` (one constrained label) or `choice`
        (JSON: a rationale, then one of the codes)."""
        if self.choice:
            return "choice"
        return "scores" if self.dimensions else "codes"

    def with_codes(self, codes: Sequence[str]) -> Rubric:
        """This rubric with `codes` as its code list (a supervisor's, per seat)."""
        return Rubric.model_validate({**self.model_dump(), "codes": list(codes)})

    @cached_property
    def output_model(self) -> type[BaseModel]:
        """The pydantic model a reply must validate against (dimensions or a choice)."""
        fields: dict[str, Any] = {}
        if self.rationale:
            # the rationale comes first so the scores are conditioned on the reasoning
            fields["rationale"] = (
                Annotated[str, StringConstraints(max_length=self.rationale)],
                ...,
            )
        if self.choice:
            fields["code"] = (Literal[tuple(self.codes)], ...)
        for d in self.dimensions:
            fields[d.name] = (Literal[d.values()], ...)
        model: type[BaseModel] = create_model(
            f"Judgment_{self.id.replace('-', '_').replace('.', '_')}",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        return model

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of a reply (constrained decoding)."""
        return self.output_model.model_json_schema()

    def text(self) -> str:
        """The rubric as prompt text."""
        lines = [self.instructions.strip()] if self.instructions.strip() else []
        if self.dimensions:
            lines.append("Score each dimension:")
            lines.extend(d.text() for d in self.dimensions)
        elif self.choice:
            lines.append(f"Choose one of: {', '.join(self.codes)}.")
        else:
            lines.append(f"Label it with one of: {', '.join(self.codes)}.")
        return "\n".join(lines)

    def score(self, parsed: dict[str, Any]) -> float | None:
        """One number per judgment: the mean of the dimension scores, each first put on
        0..`normalise` when set (None for codes and choices)."""
        values = [
            self._scaled(d, parsed[d.name])
            for d in self.dimensions
            if isinstance(parsed.get(d.name), int)
        ]
        return sum(values) / len(values) if values else None

    def _scaled(self, dimension: Dimension, value: int) -> float:
        if self.normalise is None:
            return value
        low, high = dimension.scale
        return (value - low) / (high - low) * self.normalise

    def max_tokens(self) -> int:
        """Enough tokens for any valid reply (the grammar keeps replies bounded)."""
        if self.choice:
            return 24 + max(len(c) for c in self.codes or ("x",)) // 2 + self.rationale // 2
        if self.codes:
            return 16
        return 24 + 12 * len(self.dimensions) + self.rationale // 2
