"""The bad-input corpus for interaction shapes, judges and user code: each case runs a command
through the CLI entry point in a fresh folder (also the working directory) and a user sees one
stderr line starting with `error: ` that names the problem, exit code 2, no traceback, and no
file created or changed."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import base_scenario, tree_snapshot

import personae
from personae.cli import main

GOOD_RUBRIC: dict[str, Any] = {"id": "r", "dimensions": [{"name": "empathy", "scale": [1, 5]}]}


def agent(description: str = "Someone.", **spec: Any) -> dict[str, Any]:
    return {"role": "persona", "persona": {"description": description}, **spec}


def judge(rubric: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"role": "judge", "persona": {"rubric": rubric or GOOD_RUBRIC}, **spec}


def group(**graph: Any) -> dict[str, Any]:
    """Three persona agents (ann, bo, cy) in a group conversation."""
    return {
        "name": "meeting",
        "backend": "scripted",
        "graph": {"kind": "group", "max_turns": 4, **graph},
        "agents": {"ann": agent(), "bo": agent(), "cy": agent()},
    }


def with_agents(data: dict[str, Any], **agents: Any) -> dict[str, Any]:
    """`data` with agents added or replaced (None removes one)."""
    merged = {**data["agents"], **agents}
    return {**data, "agents": {k: v for k, v in merged.items() if v is not None}}


def rated(rubric: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """The group with a judge `rater` watching ann (its spec overridden by `spec`)."""
    return with_agents(group(), rater=judge(rubric, **{"observes": ["ann"], **spec}))


def settle(db: Path) -> Path:
    """Rollback-journal mode, so that readers create no -wal/-shm beside the database."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    return db


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished group run (ann, bo, cy), for the commands that read one."""
    folder = tmp_path_factory.mktemp("made")
    scenario = folder / "meeting.yaml"
    scenario.write_text(yaml.safe_dump(group()), encoding="utf-8")
    db = folder / "meeting.db"
    personae.run(scenario, db=db)
    return settle(db)


@dataclass
class Env:
    """A case's folder and what it can write there."""

    tmp: Path
    made: Path

    @property
    def out_db(self) -> str:
        return str(self.tmp / "out.db")

    def file(self, name: str, content: str) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        return str(path)

    def scenario(self, data: dict[str, Any], name: str = "scenario.yaml") -> str:
        return self.file(name, yaml.safe_dump(data, sort_keys=False))

    def db(self) -> str:
        return str(shutil.copy(self.made, self.tmp / "run.db"))

    def judge_file(self, top: dict[str, Any] | None = None, **spec: Any) -> str:
        """A judge file rating ann; `spec` changes its judge, `top` its other keys."""
        judge = {"role": "judge", "observes": ["ann"], "persona": {"rubric": GOOD_RUBRIC}}
        data = {"name": "later", "backend": "scripted", "judge": {**judge, **spec}, **(top or {})}
        return self.file("judge.yaml", yaml.safe_dump(data, sort_keys=False))


Build = Callable[[Env], list[str]]


def run(data: dict[str, Any], *extra: str) -> Build:
    """`personae run SCENARIO --db OUT -q` (OUT must not appear)."""
    return lambda e: ["run", e.scenario(data), "--db", e.out_db, "-q", *extra]


def case(build: Build, expected: str, id: str) -> Any:
    return pytest.param(build, expected, id=id)


GRAPH_KINDS_AND_POLICIES = [
    case(run(group(kind="grup")), "did you mean 'group'", "unknown graph kind"),
    case(run(base_scenario(graph={"kind": "dyadc"})), "did you mean 'dyadic'", "misspelt dyadic"),
    case(run(group(kind=3)), "graph kind name", "graph kind not a name"),
    case(run(group(kind="teaching_item")), "own experiment", "teaching item graph kind"),
    case(run(group(kind="teaching_pass")), "own experiment", "teaching pass graph kind"),
    case(run(group(policy="round_robbin")), "did you mean 'round_robin'", "unknown policy"),
    case(run(group(policy={"p": 0.5})), "needs a kind", "policy without a kind"),
    case(run(group(policy={"kind": "respond", "p": 2})), "graph.policy: bad value for 'p'", "p"),
    case(run(group(policy={"kind": "respond", "q": 1})), "unknown key 'q'", "policy option"),
    case(
        run(group(policy={"kind": "scripted", "order": ["ann", "dan"]})),
        "'dan'",
        "scripted order names a stranger",
    ),
    case(run(group(policy={"kind": "selector", "agent": "dan"})), "'dan'", "selector agent"),
    case(run(with_agents(group(), bo=None, cy=None)), "at least 2 agents", "group of one speaker"),
]

AUDIENCES_AND_TOPOLOGIES = [
    case(
        run(with_agents(group(), ann=agent(audience=["dan"]))),
        "audience names an unknown agent 'dan'",
        "audience names a missing agent",
    ),
    case(
        run(group(seed_lines=[{"agent": "ann", "text": "Hello.", "audience": ["dan"]}])),
        "audience names an unknown agent 'dan'",
        "seed line audience names a missing agent",
    ),
    case(
        run(group(seed_lines=[{"agent": "dan", "text": "Hello."}])),
        "'dan' is not an agent that takes turns",
        "seed line by a missing agent",
    ),
    case(
        run(group(topology={"edges": [["ann", "bo"], ["bo", "dan"]]})),
        "topology names an unknown agent 'dan'",
        "edge to an unknown agent",
    ),
    case(
        run(group(topology={"edges": [["dan", "ann"]]})),
        "topology names an unknown agent 'dan'",
        "edge from an unknown agent",
    ),
    case(
        run(group(topology={"edges": [["ann", "bo"], ["bo", "ann"], ["cy", "ann"]]})),
        "'cy' is unreachable",
        "agent nobody can speak before",
    ),
    case(
        run(group(topology={"edges": [["ann", "bo"], ["bo", "ann"], ["ann", "cy"]]})),
        "nobody may speak after 'cy'",
        "agent nobody can speak after",
    ),
    case(
        run(group(topology={"edges": [["ann", "ann"], ["ann", "bo"]]})),
        "self-loop",
        "self-loop edge",
    ),
    case(run(group(topology={"star": "dan"})), "'dan'", "star around a stranger"),
    case(run(group(topology="tree")), "graph.topology", "unknown topology shape"),
    case(
        run(with_agents(group(), advisor=agent(), ann=None, buyer_advisor=agent(label="Advisor"))),
        "same speaker tag 'Advisor'",
        "label equal to another agent's default",
    ),
    case(
        run(with_agents(group(), ann=agent(label="Bo"))),
        "same speaker tag 'Bo'",
        "two agents with the same label",
    ),
]

OBSERVERS = [
    case(run(rated(observes=[])), "observes nobody", "observer watching nobody"),
    case(run(with_agents(group(), rater=judge())), "observes nobody", "judge without observes"),
    case(run(rated(observes=["rater"])), "itself", "observer watching itself"),
    case(run(rated(observes=["dan"])), "'dan'", "observer watching a missing agent"),
    case(
        run(with_agents(rated(), second=judge(observes=["rater"]))),
        "another judge",
        "observer watching a judge",
    ),
    case(
        run(with_agents(group(), bo=agent(observes=["ann"]))),
        "is not a judge",
        "non-judge observing",
    ),
    case(
        run(with_agents(group(), rater=judge(role="judg", observes=["ann"]))),
        "did you mean 'judge'",
        "unknown judge role",
    ),
    case(run(rated(route_to=["dan"])), "route_to names an unknown agent 'dan'", "route_to"),
    case(
        run(with_agents(group(), ann=agent(route_to=["bo"]))),
        "route_to only applies to judges",
        "route_to on a speaker",
    ),
    case(run(rated(route_to=["bo"], when="end")), "route_to needs when: turn", "routed end"),
    case(run(rated(when="sometimes")), "when", "unknown when"),
]

RUBRICS = [
    case(run(rated({"id": "r"})), "at least one dimension", "rubric with no dimensions"),
    case(
        run(rated({"id": "r", "dimensions": [], "codes": []})),
        "at least one dimension",
        "rubric with empty lists",
    ),
    case(
        run(rated({**GOOD_RUBRIC, "codes": ["a", "b"]})),
        "either dimensions or codes",
        "rubric with dimensions and codes",
    ),
    case(
        run(rated({"id": "r", "dimensions": [{"name": "warmth"}, {"name": "warmth"}]})),
        "distinct",
        "duplicate dimension names",
    ),
    case(
        run(rated({"id": "r", "dimensions": [{"name": "rationale"}]})),
        "not 'rationale'",
        "dimension called rationale",
    ),
    case(run(rated({"id": "r", "codes": ["ok", "ok"]})), "distinct", "duplicate codes"),
    case(
        run(rated({"id": "r", "dimensions": [{"name": "warmth", "anchors": {7: "very"}}]})),
        "anchor 7 is outside the scale 1..5",
        "anchor off the scale",
    ),
    case(
        run(rated({"id": "r", "dimensions": [{"name": "warmth", "scale": [5, 1]}]})),
        "low < high",
        "scale upside down",
    ),
    case(
        run(rated({"id": "r", "dimensions": [{"name": "warmth", "scale": [0, 1000]}]})),
        "at most 101 points",
        "scale too long",
    ),
    case(run(rated({"dimensions": [{"name": "warmth"}]})), "'rubric.id'", "rubric without an id"),
    case(
        run(rated({"id": "r", "dimensions": [{"name": "warm th"}]})),
        "name",
        "dimension name with a space",
    ),
    case(run(rated({**GOOD_RUBRIC, "scales": 3})), "unknown key", "unknown rubric key"),
]

SYNTAX_ERROR = "def broken(:\n    pass\n"
RAISES = "raise RuntimeError('lab code is broken\\nsecond line of the message')\n"


def imports_case(content: str | None, spec: str, expected: list[str], id: str) -> list[Any]:
    """The same failing import through `--import` on every command and through `imports:`."""

    def prepare(e: Env) -> str:
        if content is not None:
            e.file(spec, content)
        return spec if not spec.endswith(".py") else str(e.tmp / spec)

    def scenario_importing(e: Env) -> str:
        if content is not None:
            e.file(spec, content)
        entry = f"../{spec}" if spec.endswith(".py") else spec  # relative to the scenario
        return e.scenario({**group(), "imports": [entry]}, "sub/scenario.yaml")

    commands: dict[str, Build] = {
        "run": lambda e: ["run", e.scenario(group()), "--db", e.out_db, "--import", prepare(e)],
        "show": lambda e: ["show", e.db(), "--import", prepare(e)],
        "scenarios": lambda e: ["scenarios", "--import", prepare(e)],
        "replay": lambda e: ["replay", e.db(), "--verify", "--import", prepare(e)],
        "export": lambda e: ["export", e.db(), "--import", prepare(e)],
        "judge": lambda e: ["judge", e.db(), e.judge_file(), "--import", prepare(e)],
        "browse": lambda e: ["browse", e.db(), "--import", prepare(e)],
        "experiment": lambda e: [
            "experiment",
            "teaching",
            "teaching_budget",
            "--db",
            e.out_db,
            "--import",
            prepare(e),
        ],
        "imports:": lambda e: ["run", scenario_importing(e), "--db", e.out_db],
    }
    return [pytest.param(build, expected, id=f"{id} ({name})") for name, build in commands.items()]


IMPORTS = [
    *imports_case(
        SYNTAX_ERROR,
        "syntax_error.py",
        ["could not import", "syntax_error.py", "SyntaxError"],
        "file with a syntax error",
    ),
    *imports_case(
        RAISES,
        "raises.py",
        ["could not import", "raises.py", "RuntimeError: lab code is broken"],
        "file raising at import",
    ),
    *imports_case(
        None,
        "plug_no_such_module",
        ["could not import 'plug_no_such_module'", "No module named 'plug_no_such_module'"],
        "missing module",
    ),
    *imports_case(None, "absent.py", ["cannot import", "absent.py", "no such file"], "no file"),
]

JUDGE_FILES = [
    case(
        lambda e: ["judge", e.db(), e.judge_file(observes=["dan"]), "-q"],
        ["judge.observes", "'dan'"],
        "judge file observing an absent agent",
    ),
    case(
        lambda e: ["judge", e.db(), e.judge_file(observes=[]), "-q"],
        "observes nobody",
        "judge file observing nobody",
    ),
    case(
        lambda e: ["judge", e.db(), e.judge_file(role="judg"), "-q"],
        "did you mean 'judge'",
        "judge file with an unknown judge",
    ),
    case(
        lambda e: ["judge", e.db(), e.judge_file(role="persona"), "-q"],
        "unknown judge 'persona'",
        "judge file with a role that is not a judge",
    ),
    case(
        lambda e: ["judge", e.db(), e.judge_file(persona={"rubric": {"id": "r"}}), "-q"],
        "at least one dimension",
        "judge file with an empty rubric",
    ),
    case(
        lambda e: ["judge", e.db(), e.judge_file(route_to=["ann"]), "-q"],
        "route_to cannot apply to a finished run",
        "judge file routing verdicts",
    ),
    case(
        lambda e: ["judge", e.db(), e.judge_file({"render": "chats"}), "-q"],
        "bad value for 'render'",
        "judge file with a bad render mode",
    ),
    case(
        lambda e: ["judge", e.db(), e.judge_file({"seed": -1}), "-q"],
        "bad value for 'seed'",
        "judge file with a negative seed",
    ),
    case(
        lambda e: ["judge", e.db(), e.judge_file({"judges": {}}), "-q"],
        "did you mean 'judge'",
        "judge file with an unknown key",
    ),
]

CASES = [
    *GRAPH_KINDS_AND_POLICIES,
    *AUDIENCES_AND_TOPOLOGIES,
    *OBSERVERS,
    *RUBRICS,
    *IMPORTS,
    *JUDGE_FILES,
]


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    build: Build,
    expected: str | list[str],
    made: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = Env(tmp_path, made)
    monkeypatch.chdir(tmp_path)  # a default logs/ folder would land here and be seen
    argv = build(env)
    before = tree_snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2, (argv, captured.out, captured.err)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), lines[0]
    for part in [expected] if isinstance(expected, str) else expected:
        assert part.lower() in lines[0].lower(), lines[0]
    assert "second line" not in lines[0]  # an error's first line only
    assert "Traceback" not in captured.out + captured.err
    assert "database:" not in captured.out  # no run started
    assert tree_snapshot(tmp_path) == before
