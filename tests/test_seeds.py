"""Run seeds and the integers that reach SQLite: bounded, strict, and refused up front."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import base_scenario, db_rows

from personae import run
from personae.errors import UserError
from personae.experiments import TeachingScenario
from personae.scenario import load_scenario
from personae.seeds import SEED_LIMIT, check_seed, parse_seed

TEACHING: dict[str, Any] = {"name": "t", "backend": "simulated", "data": {"observe": 0}}


def test_largest_seed_is_stored_exactly(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    run("counseling_cbt", backend="scripted", episodes=1, db=db, seed=SEED_LIMIT - 1)
    (row,) = db_rows(db, "SELECT seed FROM runs")
    assert row["seed"] == SEED_LIMIT - 1


@pytest.mark.parametrize("seed", [SEED_LIMIT, 2**64, -1])
def test_seed_out_of_range_in_the_python_api_writes_nothing(tmp_path: Path, seed: int) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(UserError, match="seed"):
        run("counseling_cbt", backend="scripted", episodes=1, db=db, seed=seed)
    assert not db.exists()


@pytest.mark.parametrize("seed", [SEED_LIMIT, -1, True, "3", 1.5])
def test_scenario_seed_must_be_a_bounded_int(
    write_scenario: Callable[..., Path], seed: object
) -> None:
    with pytest.raises(UserError, match=r"'seed'") as info:
        load_scenario(write_scenario(base_scenario(seed=seed)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_turns", True), ("max_turns", "6"), ("max_turns", 6.0)],
)
def test_graph_integers_are_strict(
    write_scenario: Callable[..., Path], key: str, value: object
) -> None:
    data = base_scenario()
    data["graph"][key] = value
    with pytest.raises(UserError, match=f"graph.{key}"):
        load_scenario(write_scenario(data))


@pytest.mark.parametrize(("key", "value"), [("repeats", True), ("episodes", True)])
def test_top_level_counts_are_strict(
    write_scenario: Callable[..., Path], key: str, value: object
) -> None:
    with pytest.raises(UserError, match=key):
        load_scenario(write_scenario(base_scenario(**{key: value})))


@pytest.mark.parametrize(
    "update",
    [
        {"seeds": [SEED_LIMIT]},
        {"seeds": [True]},
        {"budgets": [True]},
        {"data": {"items": True}},
        {"student": {"demos": True}},
        {"bootstrap": {"resamples": True}},
    ],
)
def test_teaching_integers_are_strict_and_seeds_bounded(update: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        TeachingScenario.model_validate({**TEACHING, **update})


def test_parse_seed_reads_digits_only() -> None:
    assert parse_seed(" 42 ") == 42
    assert parse_seed(str(SEED_LIMIT - 1)) == SEED_LIMIT - 1
    for bad in ("abc", "-1", "1.5", "", str(SEED_LIMIT), "٣"):
        with pytest.raises(UserError, match="--seed"):
            parse_seed(bad)


def test_check_seed_refuses_bools() -> None:
    with pytest.raises(UserError):
        check_seed(True)
    assert check_seed(0) == 0
