"""Grid axes beyond personas: `graph.OPTION` varies a graph option per condition (a glob of
files expands to the files, relative to the scenario's folder) and `AGENT.backend` varies an
agent's backend spec. Both are part of the condition, so episode ids differ, resume keeps
them and a bad value is one line before anything runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import base_scenario, cli, db_rows
from langgraph.graph.state import CompiledStateGraph
from pydantic import Field

from personae.graphs import register_graph
from personae.graphs._conversation import SeedLine
from personae.graphs._dyadic import Dyadic, DyadicOptions, compile_dyadic


class OpeningOptions(DyadicOptions):
    opening: str | None = Field(None, description="A file whose text the counselor opens with.")


@register_graph("test_opening_file")
class OpeningFromFile(Dyadic):
    """A dyadic graph whose first line is read from a file named by an option."""

    options_model = OpeningOptions

    def build(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        opts = self.options
        assert isinstance(opts, OpeningOptions)
        if opts.opening is not None:
            text = (self.cast.base_dir / opts.opening).read_text(encoding="utf-8").strip()
            opts = opts.model_copy(update={"seed_lines": (SeedLine(agent="counselor", text=text),)})
        return compile_dyadic("counselor", "client", opts)


def _conditions(db: Path) -> list[dict[str, Any]]:
    rows = db_rows(db, "SELECT condition_json FROM episodes ORDER BY idx")
    return [json.loads(r["condition_json"]) for r in rows]


def test_a_graph_option_varies_per_condition(
    write_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_scenario(grid={"graph.max_turns": [2, 4]})
    db = tmp_path / "run.db"
    code, _, err = cli(["run", str(path), "--db", str(db), "-q"], capsys)
    assert code == 0, err
    rows = db_rows(db, "SELECT episode_id, n_turns FROM episodes ORDER BY idx")
    assert [r["n_turns"] for r in rows] == [2, 4]
    assert [c["graph"] for c in _conditions(db)] == [{"max_turns": 2}, {"max_turns": 4}]
    assert len({r["episode_id"] for r in rows}) == 2
    code, _, err = cli(["run", str(path), "--db", str(db), "-q"], capsys)  # resume: nothing left
    assert code == 0, err
    assert len(db_rows(db, "SELECT 1 FROM episodes")) == 2
    assert len(db_rows(db, "SELECT 1 FROM turns")) == 6


def test_a_glob_of_files_expands_to_one_condition_per_file(
    write_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    openings = tmp_path / "openings"
    openings.mkdir()
    (openings / "a.txt").write_text("Hello, what brings you here?\n", encoding="utf-8")
    (openings / "b.txt").write_text("Welcome back. How was the week?\n", encoding="utf-8")
    graph = {"kind": "test_opening_file", "opener": "counselor", "max_turns": 2}
    path = write_scenario(graph=graph, grid={"graph.opening": "openings/*.txt"})
    db = tmp_path / "run.db"
    code, _, err = cli(["run", str(path), "--db", str(db), "-q"], capsys)
    assert code == 0, err
    assert [c["graph"] for c in _conditions(db)] == [
        {"opening": "openings/a.txt"},  # relative to the scenario: ids do not depend on the path
        {"opening": "openings/b.txt"},
    ]
    seeds = db_rows(db, "SELECT text FROM turns WHERE kind = 'seed' ORDER BY episode_id")
    assert sorted(r["text"] for r in seeds) == [
        "Hello, what brings you here?",
        "Welcome back. How was the week?",
    ]


def test_an_agent_backend_varies_per_condition(
    write_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = ["scripted", "scripted?render_mode=chat"]
    path = write_scenario(grid={"counselor.backend": specs})
    db = tmp_path / "run.db"
    code, _, err = cli(["run", str(path), "--db", str(db), "-q"], capsys)
    assert code == 0, err
    assert [c["counselor"]["backend"] for c in _conditions(db)] == specs
    calls = db_rows(
        db,
        "SELECT e.condition_json, c.agent, c.render_mode FROM llm_calls c "
        "JOIN episodes e USING (episode_id)",
    )
    for call in calls:
        wanted = json.loads(call["condition_json"])["counselor"]["backend"]
        if call["agent"] == "counselor":
            assert call["render_mode"] == ("chat" if "chat" in wanted else "transcript")
        else:
            assert call["render_mode"] == "transcript"  # the client keeps the scenario's backend
    code, _, err = cli(["run", str(path), "--db", str(tmp_path / "x.db"), "--backend",
                        "scripted"], capsys)  # fmt: skip
    assert code == 2 and "grid varies" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"graph.max_turn": [2]}, "names no option of graph kind 'dyadic'"),
        ({"graph.max_turns": [2, -1]}, "graph.max_turns"),
        ({"counselor.backend": [3]}, "must list backend specs"),
        ({"graph.max_turns": []}, "has no values"),
    ],
)
def test_bad_grid_axes_are_one_line_and_write_nothing(
    write_scenario: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    grid: dict[str, Any],
    message: str,
) -> None:
    path = write_scenario(base_scenario(grid=grid))
    db = tmp_path / "run.db"
    code, _, err = cli(["run", str(path), "--db", str(db)], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not db.exists()
