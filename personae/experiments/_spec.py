"""The teaching scenario file: a YAML spec validated by pydantic, and loading its data.

A `TeachingScenario` names the data (generated or a JSONL/CSV file), the budgets, the intervention
functions, the explanation styles, the teacher and student settings and the seeds. Everything —
YAML syntax, unknown keys, budgets outside [0, 1], unknown intervention functions or roles,
missing or malformed dataset files, a demonstration pool too small — is checked by
`load_teaching_scenario` and `load_data` before any engine starts, as a one-line `UserError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personae.agents import Sampling, Student, Teacher, get_role
from personae.agents._teaching import Item
from personae.errors import UserError
from personae.experiments._data import load_items
from personae.experiments._generated import generated_items
from personae.experiments._interventions import get_intervention
from personae.plugins import load_imports
from personae.scenario import _read_yaml
from personae.seeds import Seed
from personae.validation import validation_error

Style = Literal["unpersonalized", "personalized"]
Budget = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]
GENERATED = "generated"
DEFAULT_FUNCTIONS = [
    "random",
    "teacher_confidence",
    "least_student_confidence",
    "expected_utility",
    "pre_utility",
    "post_utility",
    "true_utility",
    "oracle",
]


def _styles(*names: Style) -> list[Style]:
    return list(names)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Spec):
    """Where test items and demonstrations come from."""

    test: str = Field(GENERATED, description="'generated' or a .jsonl/.csv file.")
    demos: str | None = Field(
        None,
        description="Pool for demonstrations and for observing the student: 'generated', a "
        "file, or null (the generated train split, or the test file's items after the first "
        "`items`).",
    )
    items: int | None = Field(
        30, ge=1, strict=True, description="Use the first N test items (null: all)."
    )
    observe: int = Field(
        8, ge=0, strict=True, description="Pool items the student is observed on per seed."
    )


class StudentSpec(_Spec):
    """The student: role, persona, demonstrations and answer temperature."""

    role: str = "student"
    persona: str | dict[str, Any] = Field(default_factory=dict)
    demos: int = Field(
        3, ge=0, le=32, strict=True, description="Answered demonstrations in every prompt."
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    backend: str | None = None
    label: str | None = None


class TeacherSpec(_Spec):
    """The teacher: role, persona, explanation sampling and its mental model."""

    role: str = "teacher"
    persona: str | dict[str, Any] = Field(default_factory=dict)
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=64))
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="For its own answers.")
    explanation_demos: int = Field(3, ge=0, le=32, strict=True)
    mental_model_demos: int = Field(4, ge=0, le=32, strict=True)
    explain_toward: Literal["own_answer", "gold"] = "own_answer"
    backend: str | None = None
    label: str | None = None


class MultiTurnSpec(_Spec):
    """Explained items as demonstrations for the student on later unexplained items."""

    functions: list[str] = Field(default_factory=lambda: ["random", "expected_utility"])
    budgets: list[Budget] = Field(default_factory=lambda: [0.2, 0.4], min_length=1)
    demos: int = Field(3, ge=1, le=32, strict=True)
    explanations: Style | None = Field(None, description="Default: the first style.")


class BootstrapSpec(_Spec):
    """Bootstrap confidence intervals over items."""

    resamples: int = Field(2000, ge=100, strict=True)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    seed: Seed = Field(0, description="Seed of the resampling (the same table every time).")


class TeachingScenario(_Spec):
    """A validated teaching scenario file."""

    kind: Literal["teaching"] = Field("teaching", description="Marks a teaching scenario file.")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    imports: list[str] = Field(
        default_factory=list, description="Python files (relative to this file) or modules."
    )
    backend: str = "embedded"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    render: Literal["transcript", "chat"] | None = None
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    data: DataSpec = Field(default_factory=DataSpec)
    budgets: list[Budget] = Field(
        default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=1
    )
    functions: list[str] = Field(default_factory=lambda: list(DEFAULT_FUNCTIONS), min_length=1)
    explanations: list[Style] = Field(
        default_factory=lambda: _styles("unpersonalized"), min_length=1
    )
    misaligned: bool = False
    multi_turn: MultiTurnSpec | None = None
    student: StudentSpec = Field(default_factory=StudentSpec)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec)

    #: Folder that relative paths are resolved against (not part of the file).
    base_dir: Path = Field(default=Path("."), exclude=True)

    def arms(self) -> list[tuple[str, str]]:
        """(explanation style, function) pairs, in table order; the misaligned teacher last."""
        arms: list[tuple[str, str]] = [(s, f) for s in self.explanations for f in self.functions]
        if self.misaligned:
            arms.append(("misaligned", "misaligned"))
        return arms

    def styles(self) -> list[str]:
        """Every explanation style the teacher writes."""
        return [*self.explanations, *(["misaligned"] if self.misaligned else [])]


#: Where bad values in a teaching scenario are explained.
TEACHING_DOCS = "the teacher-student section of the README"


# -- loading ---------------------------------------------------------------------------------


def load_teaching_scenario(path: str | Path, *, imports: Sequence[str] = ()) -> TeachingScenario:
    """Read and validate a teaching scenario file (raises `UserError`); `imports` are modules
    or files to import first (the CLI's `--import`)."""
    path = Path(path)
    data = _read_yaml(path, "scenario file")
    if not isinstance(data, dict):
        raise UserError("a scenario must be a YAML mapping", where=str(path))
    load_imports(imports, where="--import")
    return parse_teaching(data, source=str(path), base_dir=path.resolve().parent)


def parse_teaching(
    data: dict[str, Any], *, source: str, base_dir: Path, import_code: bool = True
) -> TeachingScenario:
    """Validate a teaching scenario mapping (a file's contents, or a stored spec): its
    `imports:` are imported first (not for a stored spec: pass `--import` again)."""
    imports = data.get("imports") or []
    if import_code and isinstance(imports, list):
        load_imports([str(i) for i in imports], base_dir=base_dir, where=f"{source}: imports")
    try:
        scenario = TeachingScenario.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source, TeachingScenario, TEACHING_DOCS) from None
    scenario.base_dir = base_dir
    check_scenario(scenario, source)
    return scenario


def check_scenario(scenario: TeachingScenario, source: str = "scenario") -> None:
    """Check names the schema cannot: functions, roles, personas (raises `UserError`)."""
    for i, name in enumerate(scenario.functions):
        get_intervention(name, where=f"{source}: functions[{i}]")
    if scenario.multi_turn is not None:
        for i, name in enumerate(scenario.multi_turn.functions):
            get_intervention(name, where=f"{source}: multi_turn.functions[{i}]")
        style = scenario.multi_turn.explanations
        if style is not None and style not in scenario.explanations:
            raise UserError(
                f"multi_turn.explanations {style!r} is not one of the run's explanations",
                where=source,
                fix=f"use one of: {', '.join(scenario.explanations)}",
            )
    for key, base in (("student", Student), ("teacher", Teacher)):
        spec: StudentSpec | TeacherSpec = getattr(scenario, key)
        cls = get_role(spec.role, where=f"{source}: {key}.role")
        if not issubclass(cls, base):
            raise UserError(
                f"role {spec.role!r} is not a {key} role",
                where=f"{source}: {key}.role",
                fix=f"use '{key}' or a role that subclasses {base.__name__}",
            )
        load_persona(scenario, key)


def load_persona(scenario: TeachingScenario, key: str) -> BaseModel:
    """The validated persona of the `student` or the `teacher` (file or inline mapping)."""
    spec: StudentSpec | TeacherSpec = getattr(scenario, key)
    cls = get_role(spec.role)
    where = f"{scenario.base_dir}: {key}.persona"
    data: Any = spec.persona
    if isinstance(data, str):
        file = Path(data) if Path(data).is_absolute() else scenario.base_dir / data
        data = _read_yaml(file, f"{key} persona file")
        where = str(file)
    if not isinstance(data, dict):
        raise UserError("a persona must be a YAML mapping", where=where)
    try:
        return cls.persona_model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UserError(f"bad persona: {loc}: {err['msg']}", where=where) from None


def _source(scenario: TeachingScenario, value: str, split: str, n: int | None) -> list[Item]:
    if value == GENERATED:
        return generated_items(n or 60, split)
    path = Path(value).expanduser()
    return load_items(path if path.is_absolute() else scenario.base_dir / path)


def pool_size_needed(scenario: TeachingScenario) -> int:
    """Demonstration-pool items one seed uses (all disjoint)."""
    return scenario.student.demos + scenario.teacher.explanation_demos + scenario.data.observe


def load_data(
    scenario: TeachingScenario, *, items: int | None = None
) -> tuple[list[Item], list[Item]]:
    """The test items and the demonstration pool of `scenario` (`items` overrides its count).

    Raises:
        UserError: a missing or malformed file, too few items, or ids shared by both sets.
    """
    data = scenario.data
    count = items or data.items
    need = pool_size_needed(scenario)
    test_all = _source(scenario, data.test, "test", count)
    test = test_all[:count] if count else test_all
    if data.demos is None and data.test != GENERATED:
        pool = test_all[len(test) :]
    else:
        pool = _source(scenario, data.demos or GENERATED, "train", max(need, 40))
    if len(pool) < need:
        raise UserError(
            f"the demonstration pool has {len(pool)} items but each seed needs {need} "
            "(student.demos + teacher.explanation_demos + data.observe)",
            where=f"{scenario.base_dir}: data.demos",
            fix="point data.demos at a larger file, or lower those counts or data.items",
        )
    shared = {i.id for i in test} & {i.id for i in pool}
    if shared:
        raise UserError(
            f"{len(shared)} items are both test items and demonstrations "
            f"(e.g. {sorted(shared)[0]!r})",
            where=f"{scenario.base_dir}: data",
            fix="use a separate data.demos file, or leave data.demos unset",
        )
    return test, pool
