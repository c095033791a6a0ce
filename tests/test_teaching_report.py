"""A teaching run's tables again from its database: re-scored for other budgets, functions and
bootstrap settings without a model call; its figures (PNG at 300 dpi, PDF, SVG); and its
`interventions` table exported."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import cli, db_rows, file_snapshot
from PIL import Image
from typer.testing import CliRunner

from personae.cli import app
from personae.experiments import (
    ItemEstimate,
    SimulatedStudentBackend,
    TeachingResult,
    TeachingScenario,
    explained_at,
    register_intervention,
    run_teaching,
    teaching_figure,
    teaching_report,
)
from personae.experiments._plot import MAX_LINES, plan_panels

REPO = Path(__file__).resolve().parents[1]
ITEMS = [f"gen-test-{i:03d}" for i in range(12)]

#: A quick run with every kind of arm: two styles, an upper bound and the oracle, the
#: misaligned teacher, multi-turn passes, two seeds.
SPEC: dict[str, Any] = {
    "kind": "teaching",
    "name": "report_teaching",
    "backend": "simulated",
    "seeds": [0, 1],
    "data": {"items": 12, "observe": 2},
    "budgets": [0.0, 0.5, 1.0],
    "functions": ["random", "expected_utility", "true_utility", "oracle"],
    "explanations": ["unpersonalized", "personalized"],
    "misaligned": True,
    "multi_turn": {"functions": ["random", "expected_utility"], "budgets": [0.25, 0.5]},
    "student": {"demos": 1},
    "teacher": {"explanation_demos": 1, "mental_model_demos": 2},
    "bootstrap": {"resamples": 200},
}


def spread(seed: int, low: float = 0.1, high: float = 0.9) -> dict[str, float]:
    """Distinct per-item probabilities, so rankings have no ties."""
    rng = random.Random(seed)
    values = rng.sample([round(low + (high - low) * i / 997, 6) for i in range(998)], len(ITEMS))
    return dict(zip(ITEMS, values, strict=True))


def student() -> SimulatedStudentBackend:
    return SimulatedStudentBackend(p_pre=spread(1), p_post=spread(2), mental_model_noise=0.1)


def spec(**overrides: Any) -> TeachingScenario:
    scenario = TeachingScenario.model_validate({**SPEC, **overrides})
    scenario.base_dir = REPO / "scenarios"
    return scenario


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TeachingResult]:
    """A finished run's database and the result the run itself returned."""
    db = tmp_path_factory.mktemp("report") / "run.db"
    return db, run_teaching(spec(), db=db, backend=student())


@pytest.fixture
def db(finished: tuple[Path, TeachingResult], tmp_path: Path) -> Path:
    """A copy of the finished database (a test may change it)."""
    copy = tmp_path / "copy.db"
    shutil.copy(finished[0], copy)
    return copy


def tables(result: TeachingResult) -> dict[str, Any]:
    """What a run stores as its tables (its summary without the seconds)."""
    return {k: v for k, v in result.summary().items() if k != "elapsed_s"}


# -- the same tables ---------------------------------------------------------------------------


def test_report_reproduces_the_runs_own_tables_exactly(
    finished: tuple[Path, TeachingResult],
) -> None:
    path, run = finished
    report = teaching_report(path)
    assert tables(report) == tables(run)
    stored = json.loads(db_rows(path, "SELECT summary_json FROM runs")[0]["summary_json"])
    assert {k: stored[k] for k in tables(run)} == tables(run)  # what the run stored, too
    assert stored["elapsed_s"] > 0  # the run's own seconds, not the result's placeholder
    assert (report.run_id, report.db_path) == (run.run_id, run.db_path)
    assert (report.calls, report.prompt_tokens, report.completion_tokens) == (
        run.calls,
        run.prompt_tokens,
        run.completion_tokens,
    )


def test_the_report_command_prints_the_run_commands_tables(tmp_path: Path) -> None:
    scenario = tmp_path / "t.yaml"
    scenario.write_text(yaml.safe_dump(SPEC | {"backend_options": {"p_pre": 0.4, "p_post": 0.8}}))
    db = tmp_path / "t.db"
    runner = CliRunner()
    ran = runner.invoke(app, ["experiment", "teaching", str(scenario), "--db", str(db), "-q"])
    assert ran.exit_code == 0, ran.output
    reported = runner.invoke(app, ["experiment", "teaching", "report", str(db)])
    assert reported.exit_code == 0, reported.output

    def printed_tables(text: str) -> list[str]:  # without the database line and the summary
        lines = text.splitlines()
        return lines[1:-1] if lines[0].startswith("database: ") else lines[:-1]

    assert printed_tables(reported.stdout) == printed_tables(ran.stdout)
    assert "multi-turn" in reported.stdout and "misaligned" in reported.stdout
    assert reported.stdout.splitlines()[-1].startswith("report of run ")


# -- other budgets, functions and bootstrap settings ------------------------------------------


def test_other_budgets_and_functions_are_rescored_from_the_stored_outcomes(
    finished: tuple[Path, TeachingResult],
) -> None:
    path, run = finished
    budgets = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
    functions = ["random", "oracle", "least_student_confidence", "pre_utility"]
    report = teaching_report(path, budgets=budgets, functions=functions)
    styles = ["unpersonalized", "personalized"]
    assert [c.label for c in report.curves] == [
        *(f"{f} [{s}]" for s in styles for f in functions),
        "misaligned",
    ]
    assert report.budgets == tuple(budgets)
    assert all(len(c.accuracy) == len(c.low) == len(c.high) == 6 for c in report.curves)
    assert len(report.table().columns) == 1 + len(budgets)
    # the multi-turn passes ran with their own functions and budgets: unchanged
    assert tables(report)["multi_turn"] == tables(run)["multi_turn"]
    # budget 0 is the student alone for every arm
    assert len({c.accuracy[0] for c in report.curves}) == 1
    # the run's arms at the run's budgets keep the run's values
    for function in ("random", "oracle"):
        for style in styles:
            mine, theirs = report.curve(function, style), run.curve(function, style)
            for b in (0.0, 0.5, 1.0):
                assert mine.at(b) == theirs.at(b)
    # and every value is the per-item rescoring by hand: with-explanation outcome where the
    # function's ranking explains the item at that budget, the outcome alone elsewhere
    for curve in report.curves:
        for k, b in enumerate(budgets):
            per_seed = []
            for seed in (0, 1):
                outcomes = report.outcomes[seed][curve.style]
                ranking = report.rankings[seed][(curve.style, curve.function)]
                chosen = explained_at(ranking, outcomes.n_items, b)
                per_seed.append(
                    [
                        post if item in chosen else pre
                        for item, pre, post in zip(
                            outcomes.item_ids,
                            outcomes.pre_correct,
                            outcomes.post_correct,
                            strict=True,
                        )
                    ]
                )
            assert curve.accuracy[k] == pytest.approx(float(np.mean(np.mean(per_seed, axis=0))))
    # a budget the run did not have lies between its neighbours for the upper bound
    oracle = report.curve("oracle", "unpersonalized")
    assert oracle.at(0.0) <= oracle.at(0.1) <= oracle.at(0.25) <= oracle.at(0.5)


def test_bootstrap_settings_change_only_the_intervals(
    finished: tuple[Path, TeachingResult],
) -> None:
    path, run = finished
    again = teaching_report(path, resamples=200, bootstrap_seed=0)
    assert tables(again) == tables(run)  # the run's own settings: the same tables
    other = teaching_report(path, resamples=500, bootstrap_seed=7)
    assert [c.accuracy for c in other.curves] == [c.accuracy for c in run.curves]
    assert [c.low for c in other.curves] != [c.low for c in run.curves]
    assert (
        teaching_report(path, bootstrap_seed=7).curves
        == teaching_report(path, bootstrap_seed=7).curves
    )  # seeded: the same every time


@register_intervention("tests_first_items_first")
def _first_items_first(items: Sequence[ItemEstimate], rng: random.Random) -> dict[str, float]:
    """Explain the test set in order."""
    return {e.item_id: -e.index for e in items}


def test_an_arm_needing_model_calls_is_a_one_line_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "small.db"
    small = spec(
        functions=["random"], budgets=[0.0, 0.25], explanations=["unpersonalized"],
        misaligned=False, multi_turn=None,
    )  # fmt: skip
    run_teaching(small, db=db, backend=student())
    explained = {
        r["item_id"]
        for r in db_rows(db, "SELECT item_id FROM interventions WHERE decided AND seed = 0")
    }
    assert explained != set(ITEMS[:3])  # so the first three items were not all explained
    before = file_snapshot(db)
    cases = {
        ("--budgets", "0,1"): ["'random' at budget 1", "--budgets"],
        ("--functions", "tests_first_items_first"): ["'tests_first_items_first'", "--functions"],
    }
    for argv, expected in cases.items():
        code, out, err = cli(["experiment", "teaching", "report", str(db), *argv], capsys)
        assert code == 2 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert "needs model calls not in the database" in lines[0]
        for part in expected:
            assert part in lines[0]
    assert file_snapshot(db) == before
    # a function that chooses among the items the run explained needs none
    ok = teaching_report(db, budgets=[0.0, 0.25], functions=["random"])
    assert ok.curve("random").at(0.25) >= 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budgets", "0,1.5"], "--budgets: bad budget 1.5"),
        (["--budgets", "0,lots"], "--budgets: bad budget 'lots'"),
        (["--functions", "expected_utilty"], "did you mean 'expected_utility'"),
        (["--n-resamples", "10"], "--n-resamples: 10 resamples are too few"),
        (["--seed", "x"], "--seed: bad seed 'x'"),
        (["--run", "nope"], "no teaching run 'nope'"),
        (["--plot", "figure.gif"], "unsupported plot format '.gif'"),
    ],
)
def test_bad_report_options_are_one_line_errors(
    db: Path,
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(["experiment", "teaching", "report", str(db), *argv], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "figure.gif").exists()


def test_a_database_without_a_teaching_run_is_a_one_line_error(
    write_scenario: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import personae

    db = tmp_path / "talk.db"
    personae.run(write_scenario(), db=db)
    code, _, err = cli(["experiment", "teaching", "report", str(db)], capsys)
    assert code == 2 and "holds no teaching run" in err and len(err.strip().splitlines()) == 1


def _changed(db: Path, sql: str) -> Path:
    conn = sqlite3.connect(db)
    conn.execute(sql)
    conn.commit()
    conn.close()
    return db


def test_a_report_says_when_episodes_are_missing(db: Path) -> None:
    _changed(
        db,
        "UPDATE episodes SET status = 'failed' WHERE episode_id = (SELECT episode_id FROM "
        "episodes WHERE condition_json LIKE '%\"teach\"%' LIMIT 1)",
    )
    notes: list[str] = []
    report = teaching_report(db, notify=notes.append)
    assert report.failed_items == 1
    assert "1 episodes of the experiment are not complete" in notes[0]
    assert f"personae run --resume {db}" in notes[0]


def test_a_report_says_when_a_function_ranks_otherwise_than_the_run_decided(db: Path) -> None:
    notes: list[str] = []
    teaching_report(db, notify=notes.append)
    assert notes == []  # today's code ranks as the run did
    _changed(db, "UPDATE interventions SET rank = rank + 100 WHERE function = 'oracle'")
    teaching_report(db, notify=notes.append)
    assert len(notes) == 1 and notes[0].startswith("note: oracle now rank the items otherwise")


# -- figures -----------------------------------------------------------------------------------


def test_panels_hold_at_most_five_lines_and_every_arm(
    finished: tuple[Path, TeachingResult],
) -> None:
    _, run = finished
    wide = teaching_report(
        finished[0],
        functions=[
            "random",
            "teacher_confidence",
            "least_student_confidence",
            "expected_utility",
            "pre_utility",
            "post_utility",
            "true_utility",
            "oracle",
            "tests_first_items_first",
        ],
    )
    for result in (run, wide):
        rows = plan_panels(result.curves, result.multi_turn)
        panels = [p for row in rows for p in row]
        assert all(p.lines <= MAX_LINES for p in panels)
        drawn = {(c.style, c.function) for p in panels for c in p.curves}
        assert drawn == {(c.style, c.function) for c in result.curves}
        assert any(p.title == "misaligned teacher" for p in panels)
        assert sum(len(p.multi_turn) for p in panels) == len(result.multi_turn) == 4
    # nine functions: grouped into panels per style, random the reference in each
    rows = plan_panels(wide.curves, wide.multi_turn)
    assert [len(r) for r in rows] == [3, 3, 2]
    assert all(p.curves[0].function == "random" for p in rows[0])


def test_figure_styles_tell_the_lines_apart(finished: tuple[Path, TeachingResult]) -> None:
    import matplotlib.pyplot as plt

    _, run = finished
    fig = teaching_figure(run.curves, title="t", multi_turn=run.multi_turn)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 4  # two styles, the misaligned teacher, multi-turn
        for ax in axes[:2]:
            lines = {line.get_label(): line for line in ax.get_lines()}
            assert len(lines) <= MAX_LINES
            assert lines["true_utility"].get_linestyle() == "--"
            assert lines["oracle"].get_linestyle() == "--"
            assert lines["random"].get_linestyle() == "-"
            markers = [line.get_marker() for line in lines.values()]
            assert len(set(markers)) == len(markers)
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            assert legend == ["random", "expected_utility", "true_utility", "oracle"]
        bad = {line.get_label(): line for line in axes[2].get_lines()}["misaligned teacher"]
        assert bad.get_linestyle() == "-." and bad.get_color() == "#000000"
        labels = [t.get_text() for t in axes[3].get_legend().get_texts()]
        assert "random: with demonstrations" in labels and "random: student alone" in labels
        caption = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
        assert "Shaded: 95% percentile-bootstrap CI over items" in caption
        assert "over 12 test items (each item averaged over 2 seeds)" in caption
    finally:
        plt.close(fig)
    fine = teaching_report(finished[0], budgets=[i / 20 for i in range(21)])
    fig = teaching_figure(fine.curves)
    try:  # 21 budgets: a marker on every other one, so they do not pile up
        assert {line.get_markevery() for line in fig.axes[0].get_lines()} == {2}
    finally:
        plt.close(fig)


def test_figures_in_each_format(finished: tuple[Path, TeachingResult], tmp_path: Path) -> None:
    path, _ = finished
    for suffix in ("png", "pdf", "svg"):
        target = tmp_path / "figures" / f"curves.{suffix}"
        code = CliRunner().invoke(
            app, ["experiment", "teaching", "report", str(path), "--plot", str(target)]
        )
        assert code.exit_code == 0, code.output
        assert f"plot: {target}" in code.stdout
    png = tmp_path / "figures" / "curves.png"
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert image.size[0] >= 2000  # two panels of 3.5 in at 300 dpi
    pdf = (tmp_path / "figures" / "curves.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf  # TrueType fonts embedded
    svg = (tmp_path / "figures" / "curves.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "percentile-bootstrap CI over items" in svg  # text is text
    # the same tables make the same files
    again = tmp_path / "again.svg"
    assert (
        CliRunner()
        .invoke(app, ["experiment", "teaching", "report", str(path), "--plot", str(again)])
        .exit_code
        == 0
    )
    assert again.read_bytes() == (tmp_path / "figures" / "curves.svg").read_bytes()


# -- the interventions export ------------------------------------------------------------------


def test_interventions_export_in_every_flat_format(
    finished: tuple[Path, TeachingResult], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = finished
    stored = db_rows(path, "SELECT * FROM interventions")
    out = {f: tmp_path / f"decisions.{f}" for f in ("jsonl", "csv", "parquet")}
    for fmt, target in out.items():
        code, _, err = cli(
            ["export", str(path), "--table", "interventions", "-f", fmt, "-o", str(target)], capsys
        )
        assert code == 0 and f"{len(stored)} decisions" in err
    rows = [json.loads(line) for line in out["jsonl"].read_text().splitlines()]
    assert len(rows) == len(stored)
    assert {r["decision_id"]: {k: v for k, v in r.items() if k != "scenario"} for r in rows} == {
        r["decision_id"]: r for r in stored
    }
    assert {r["scenario"] for r in rows} == {"report_teaching"}
    table = pq.read_table(out["parquet"])
    assert table.num_rows == len(stored)
    assert table.schema.field("budget").type == "double"
    assert sorted(table.column("decision_id").to_pylist()) == sorted(
        r["decision_id"] for r in stored
    )
    assert out["csv"].read_text().count("\n") == len(stored) + 1
    # the episode filters apply: one seed's decisions
    code, stdout, _ = cli(
        ["export", str(path), "--table", "interventions", "--where", "teaching.seed=1"], capsys
    )
    seed_one = [json.loads(line) for line in stdout.splitlines()]
    assert seed_one and {r["seed"] for r in seed_one} == {1}
    assert len(seed_one) == sum(r["seed"] == 1 for r in stored)


def test_interventions_export_of_a_database_without_them_is_a_one_line_error(
    write_scenario: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import personae

    db = tmp_path / "talk.db"
    personae.run(write_scenario(), db=db)
    code, out, err = cli(["export", str(db), "--table", "interventions"], capsys)
    assert code == 2 and out == ""
    assert "holds no intervention decisions" in err and len(err.strip().splitlines()) == 1
