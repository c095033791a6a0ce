"""User code from the command line: a lab's own role, graph kind, turn policy, judge and
intervention function, in one separate `.py` file, work from every command with `--import`
(and from `imports:` in a scenario, a module on PYTHONPATH, an installed entry point); without
the import, commands that rebuild agents from the database say which imports to pass again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, cli, db_rows

import personae
from personae import RunLog
from personae.agents._registry import ROLES
from personae.cli import main
from personae.experiments._interventions import INTERVENTIONS
from personae.graphs import GRAPHS, POLICIES
from personae.judges import JUDGES

# The lab's code, exactly as a user would write it in a file of their own.
LAB_CODE = '''
"""A lab's own code: a role, a graph kind, a turn policy, a judge and an intervention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from personae.agents import Agent, register_role
from personae.errors import UserError
from personae.experiments import register_intervention
from personae.graphs import (
    Decision,
    Episode,
    GraphKind,
    GraphOptions,
    TurnContext,
    TurnPolicy,
    register_graph,
    register_turn_policy,
)
from personae.judges import JudgeAgent, register_judge


class CoachPersona(BaseModel):
    """No model_config: personae still rejects unknown keys."""

    id: str = "coach"
    name: str
    motto: str = ""


@register_role("plug_coach")
class Coach(Agent):
    """A running coach with a motto."""

    persona_model: ClassVar[type[BaseModel]] = CoachPersona

    def system_prompt(self) -> str:
        assert isinstance(self.persona, CoachPersona)
        return f"{self.label} is {self.persona.name}, a running coach. Motto: {self.persona.motto}"


class InterviewOptions(GraphOptions):
    questions: int = Field(1, ge=1, le=5, description="Question-and-answer rounds.")


class InterviewState(TypedDict):
    end_reason: str | None


@register_graph("plug_interview")
class Interview(GraphKind):
    """An interview: the host asks, the guest answers, the host sums up."""

    options_model = InterviewOptions

    def check(self) -> None:
        if len(self.cast.speakers) != 2:
            raise UserError("an interview needs a host and a guest", where=self.cast.where(""))

    def build(self) -> Any:
        host, guest = self.cast.speakers
        assert isinstance(self.options, InterviewOptions)
        rounds = self.options.questions

        async def ask(state: InterviewState, runtime: Runtime[Episode]) -> dict[str, Any]:
            await runtime.context.take_turn(host)
            return {}

        async def answer(state: InterviewState, runtime: Runtime[Episode]) -> dict[str, Any]:
            await runtime.context.take_turn(guest)
            return {}

        async def sum_up(state: InterviewState, runtime: Runtime[Episode]) -> dict[str, Any]:
            await runtime.context.take_turn(host)
            return {"end_reason": "summed_up"}

        async def more(state: InterviewState, runtime: Runtime[Episode]) -> str:
            return "ask" if runtime.context.turns_taken < 2 * rounds else "sum_up"

        builder: Any = StateGraph(InterviewState, context_schema=Episode)
        builder.add_node("ask", ask)
        builder.add_node("answer", answer)
        builder.add_node("sum_up", sum_up)
        builder.add_edge(START, "ask")
        builder.add_edge("ask", "answer")
        builder.add_conditional_edges("answer", more, ["ask", "sum_up"])
        builder.add_edge("sum_up", END)
        return builder.compile(name="plug_interview")


@register_turn_policy("plug_reverse")
class Reverse(TurnPolicy):
    """Speakers in reverse scenario order, cycled."""

    async def choose(self, ctx: TurnContext) -> Decision:
        order = list(reversed(self.speakers))
        return self.decision(ctx, order[len(ctx.previous) % len(order)], "reverse")


@register_judge("plug_length_judge")
class LengthJudge(JudgeAgent):
    """Scores a line by its length in words (no model)."""

    def evaluate(self, history: Sequence[Any], target: Any) -> dict[str, Any] | None:
        words = len(target.text.split()) if target is not None else 0
        return {"rationale": f"{words} words", "brevity": max(1, min(5, words // 2))}


@register_intervention("plug_last_first")
def last_first(items: Sequence[Any], rng: Any) -> Mapping[str, float]:
    """Explain the last items first."""
    return {e.item_id: float(e.index) for e in items}
'''

# An installed package's module, found through its `personae` entry point.
EP_CODE = """
from personae.agents import PersonaAgent, register_role


@register_role("plug_ep_guest")
class Guest(PersonaAgent):
    \"\"\"A guest described in YAML.\"\"\"
"""

LENGTH_RATER: dict[str, Any] = {
    "role": "plug_length_judge",
    "observes": ["host"],
    "persona": {
        "rubric": {"id": "brevity_v1", "rationale": 40, "dimensions": [{"name": "brevity"}]}
    },
}

INTERVIEW: dict[str, Any] = {
    "name": "plug_interview_run",
    "backend": "scripted",
    "seed": 5,
    "graph": {"kind": "plug_interview", "questions": 2},
    "agents": {
        "host": {"role": "plug_coach", "persona": {"name": "Kim", "motto": "Slow is smooth."}},
        "guest": {
            "role": "persona",
            "persona": {"id": "ola", "name": "Ola", "description": "A first-time marathoner."},
        },
        "rater": LENGTH_RATER,
    },
}

GROUP: dict[str, Any] = {
    "name": "plug_group_run",
    "backend": "scripted",
    "graph": {"kind": "group", "policy": "plug_reverse", "max_turns": 6},
    "agents": {
        "ann": {"role": "persona", "persona": {"description": "A neighbour."}},
        "bo": {"role": "persona", "persona": {"description": "Another neighbour."}},
        "coach": {"role": "plug_coach", "persona": {"name": "Kim", "motto": "Keep moving."}},
    },
}

TEACHING: dict[str, Any] = {
    "kind": "teaching",
    "name": "plug_teaching",
    "backend": "simulated",
    "seeds": [0],
    "data": {"items": 4, "observe": 0},
    "budgets": [0.0, 0.5],
    "functions": ["plug_last_first"],
    "student": {"demos": 0},
    "teacher": {"explanation_demos": 0, "mental_model_demos": 0, "explain_toward": "gold"},
    "bootstrap": {"resamples": 200},
}

LENGTH_JUDGE_FILE: dict[str, Any] = {
    "name": "guest_length",
    "backend": "scripted",
    "judge": {
        "role": "plug_length_judge",
        "observes": ["guest"],
        "persona": {"rubric": {"id": "brevity_v2", "dimensions": [{"name": "brevity"}]}},
    },
}


def ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command that must succeed; its stdout."""
    code, out, err = cli(argv, capsys)
    assert code == 0, (argv, out, err)
    return out


def one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command that must fail as a user error: exit 2, one `error: ` line, no traceback."""
    code, out, err = cli(argv, capsys)
    assert code == 2, (argv, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in out + err
    return lines[0]


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Lab:
    """The lab's folder: its code file, scenarios, and a database of the interview run."""

    folder: Path
    code: Path
    interview: Path
    db: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    folder = tmp_path_factory.mktemp("lab")
    code = folder / "lab_code.py"
    code.write_text(LAB_CODE, encoding="utf-8")
    interview = write_yaml(folder / "interview.yaml", INTERVIEW)
    db = folder / "interview.db"
    with pytest.raises(SystemExit) as info:
        main(["run", str(interview), "--import", str(code), "--db", str(db), "-q"])
    assert info.value.code in (0, None)
    return Lab(folder, code, interview, db)


Forget = Callable[[], None]


@pytest.fixture
def forget_lab_code(monkeypatch: pytest.MonkeyPatch) -> Forget:
    """Drop the lab's names from the registries, as a new process that reads only the database
    would have them (restored after the test)."""

    def forget() -> None:
        for registry, names in (
            (ROLES, ["plug_coach", "plug_length_judge"]),
            (GRAPHS, ["plug_interview"]),
            (POLICIES, ["plug_reverse"]),
            (JUDGES, ["plug_length_judge"]),
            (INTERVENTIONS, ["plug_last_first"]),
        ):
            for name in names:
                if name in registry:
                    monkeypatch.delitem(registry._entries, name)

    return forget


# -- run, show, scenarios ------------------------------------------------------------------------


def test_run_with_import_runs_the_users_graph_kind_role_and_judge(lab: Lab) -> None:
    rows = db_rows(lab.db, "SELECT idx, agent, role, text FROM turns ORDER BY idx")
    assert [(r["agent"], r["role"]) for r in rows] == [
        ("host", "plug_coach"),
        ("guest", "persona"),
        ("host", "plug_coach"),
        ("guest", "persona"),
        ("host", "plug_coach"),
    ]
    (episode,) = db_rows(lab.db, "SELECT end_reason, status FROM episodes")
    assert episode == {"end_reason": "summed_up", "status": "complete"}
    prompt = db_rows(lab.db, "SELECT prompt FROM llm_calls WHERE agent = 'host' LIMIT 1")[0]
    assert "Host is Kim, a running coach. Motto: Slow is smooth." in prompt["prompt"]
    verdicts = db_rows(lab.db, "SELECT turn_idx, judge, rubric, parsed_json FROM judgments")
    assert [(v["turn_idx"], v["judge"], v["rubric"]) for v in verdicts] == [
        (0, "rater", "brevity_v1"),
        (2, "rater", "brevity_v1"),
        (4, "rater", "brevity_v1"),
    ]
    assert json.loads(verdicts[0]["parsed_json"]) == {"rationale": "5 words", "brevity": 2}


def test_show_with_import_prints_the_transcript_and_verdicts(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ok(["show", str(lab.db), "0", "--import", str(lab.code)], capsys)
    assert "host: This is host, turn 0." in out
    assert "guest: This is guest, turn 1." in out
    assert "rater: brevity 2 — 5 words" in out
    assert "complete (summed_up), 5 turns" in out


def test_scenarios_with_import_lists_the_users_kinds_policies_roles_and_judges(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ok(["scenarios", "--import", str(lab.code)], capsys)
    assert "plug_interview" in out
    assert "An interview: the host asks" in out
    assert "questions: Question-and-answer rounds. (default: 1)" in out
    policies = next(line for line in out.splitlines() if line.startswith("turn policies:"))
    assert "plug_reverse" in policies
    roles = next(line for line in out.splitlines() if line.startswith("roles:"))
    assert "plug_coach" in roles and "plug_length_judge" in roles
    judges = next(line for line in out.splitlines() if line.startswith("judges:"))
    assert "plug_length_judge" in judges


def test_group_conversation_with_the_users_turn_policy(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write_yaml(tmp_path / "group.yaml", GROUP)
    db = tmp_path / "group.db"
    ok(["run", str(scenario), "--import", str(lab.code), "--db", str(db), "-q"], capsys)
    rows = db_rows(db, "SELECT agent, decision_json FROM turns ORDER BY idx")
    assert [r["agent"] for r in rows] == ["coach", "bo", "ann"] * 2
    decisions = [json.loads(r["decision_json"]) for r in rows]
    assert {(d["policy"], d["rule"]) for d in decisions} == {("plug_reverse", "reverse")}
    out = ok(["replay", str(db), "--verify", "--import", str(lab.code)], capsys)
    assert "identical" in out


# -- replay: step, verify, fork ------------------------------------------------------------------


def test_replay_print_verify_and_fork_with_import(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "copy.db"
    db.write_bytes(lab.db.read_bytes())
    code = ["--import", str(lab.code)]
    step = ok(["replay", str(db), "0", "--print", "--turn", "1", *code], capsys)
    assert "turn 1/4" in step and "guest" in step
    assert "Guest is Ola." in step  # the rendered prompt
    out = ok(["replay", str(db), "--verify", *code], capsys)
    assert "identical" in out and "differs" not in out
    fork = ok(["replay", str(db), "0", "--fork-at", "2", *code], capsys)
    assert "complete, 5 turns" in fork
    with RunLog(db) as log:
        parent, child = (e["episode_id"] for e in log.episodes())
        kept, continued = log.turns(parent), log.turns(child)
    assert [t.text for t in continued[:2]] == [t.text for t in kept[:2]]
    assert [t.agent for t in continued] == ["host", "guest", "host", "guest", "host"]
    out = ok(["replay", str(db), "--verify", *code], capsys)
    assert "2/2 episodes identical" in out


# -- export and judge ----------------------------------------------------------------------------


def test_export_jsonl_and_sft_with_import(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code = ["--import", str(lab.code)]
    rows = ok(["export", str(lab.db), "-f", "jsonl", *code], capsys).strip().splitlines()
    assert [json.loads(r)["agent"] for r in rows] == ["host", "guest", "host", "guest", "host"]
    out = ok(["export", str(lab.db), "-f", "sft", "--role", "plug_coach", *code], capsys)
    (record,) = [json.loads(line) for line in out.strip().splitlines()]
    assert record["agent"] == "host"
    assert record["messages"][0] == {
        "role": "system",
        "content": "Host is Kim, a running coach. Motto: Slow is smooth.",
    }
    assert record["messages"][-1] == {"role": "assistant", "content": "This is host, turn 4."}


def test_judge_command_with_the_users_judge(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "copy.db"
    db.write_bytes(lab.db.read_bytes())
    spec = write_yaml(tmp_path / "length.yaml", LENGTH_JUDGE_FILE)
    out = ok(["judge", str(db), str(spec), "-q", "--import", str(lab.code)], capsys)
    assert "2 judgments on 1 episodes, mean score 2.00" in out
    rows = db_rows(db, "SELECT turn_idx, rubric FROM judgments WHERE judge = 'guest_length'")
    assert rows == [
        {"turn_idx": 1, "rubric": "brevity_v2"},
        {"turn_idx": 3, "rubric": "brevity_v2"},
    ]


# -- the teaching experiment ---------------------------------------------------------------------


def test_experiment_teaching_with_the_users_intervention_function(
    lab: Lab, tmp_path: Path, forget_lab_code: Forget, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write_yaml(tmp_path / "teaching.yaml", TEACHING)
    db = tmp_path / "teaching.db"
    out = ok(
        ["experiment", "teaching", str(scenario), "--db", str(db), "-q", "--import", str(lab.code)],
        capsys,
    )
    assert "plug_last_first" in out
    explained = db_rows(
        db,
        "SELECT item_id FROM interventions WHERE function = 'plug_last_first' AND budget = 0.5 "
        "AND decided = 1 ORDER BY item_id",
    )
    assert [r["item_id"] for r in explained] == ["gen-test-002", "gen-test-003"]
    # the run replays and resumes with the same import
    assert "identical" in ok(["replay", str(db), "--verify", "--import", str(lab.code)], capsys)
    resumed = ok(["run", "--resume", str(db), "-q", "--import", str(lab.code)], capsys)
    assert "already complete" in resumed
    forget_lab_code()
    line = one_error_line(["replay", str(db), "--verify"], capsys)
    assert "unknown intervention function 'plug_last_first'" in line and "--import" in line


# -- imports: in the scenario, a module on PYTHONPATH, an entry point ---------------------------


def test_scenario_imports_are_relative_to_the_scenario_file(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = tmp_path / "code" / "lab_code.py"
    code.parent.mkdir()
    code.write_text(LAB_CODE, encoding="utf-8")
    scenario = write_yaml(
        tmp_path / "scenarios" / "interview.yaml", {**INTERVIEW, "imports": ["../code/lab_code.py"]}
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the scenario's folder
    db = tmp_path / "run.db"
    ok(["run", str(scenario), "--db", str(db), "-q"], capsys)
    assert len(db_rows(db, "SELECT id FROM turns")) == 5
    (run,) = db_rows(db, "SELECT spec_json FROM runs")
    assert json.loads(run["spec_json"])["imports"] == ["../code/lab_code.py"]


def _personae(
    args: list[str], cwd: Path, pythonpath: list[Path]
) -> subprocess.CompletedProcess[str]:
    """The command in a new process (nothing imported yet), with `pythonpath` added."""
    path = os.pathsep.join([*map(str, pythonpath), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "personae", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_module_name_on_pythonpath_and_an_installed_entry_point(tmp_path: Path) -> None:
    # in a new process: the host's role comes from a module named with --import (found on
    # PYTHONPATH), the guest's from a `personae` entry point of an installed distribution
    site = tmp_path / "site"
    site.mkdir()
    (site / "plug_pathmod.py").write_text(
        LAB_CODE.replace('"plug_coach"', '"plug_path_coach"'), encoding="utf-8"
    )
    (site / "plug_epmod.py").write_text(EP_CODE, encoding="utf-8")
    dist = site / "plug_lab-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plug-lab\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[personae]\nlab = plug_epmod\n")
    agents = {
        "host": {"role": "plug_path_coach", "persona": {"name": "Kim", "motto": "Keep moving."}},
        "guest": {"role": "plug_ep_guest", "persona": {"description": "A first-time runner."}},
    }
    write_yaml(tmp_path / "two.yaml", {**INTERVIEW, "agents": agents})
    proc = _personae(
        ["run", "two.yaml", "--import", "plug_pathmod", "--db", "two.db", "-q"], tmp_path, [site]
    )
    assert proc.returncode == 0, proc.stderr
    rows = db_rows(tmp_path / "two.db", "SELECT agent, role FROM turns")
    assert {(r["agent"], r["role"]) for r in rows} == {
        ("host", "plug_path_coach"),
        ("guest", "plug_ep_guest"),
    }


# -- without the import --------------------------------------------------------------------------


def test_replay_in_a_new_process_without_the_import_names_the_stored_imports(
    tmp_path: Path,
) -> None:
    code = tmp_path / "lab_code.py"
    code.write_text(LAB_CODE, encoding="utf-8")
    scenario = write_yaml(tmp_path / "interview.yaml", {**INTERVIEW, "imports": ["lab_code.py"]})
    personae.run(scenario, db=tmp_path / "run.db")
    before = (tmp_path / "run.db").read_bytes()
    proc = _personae(["replay", "run.db", "--verify"], tmp_path, [])
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in proc.stderr
    assert "unknown graph kind 'plug_interview'" in line
    assert f"this run imported lab_code.py (from {tmp_path})" in line
    assert "--import" in line
    assert (tmp_path / "run.db").read_bytes() == before


@pytest.mark.parametrize(
    "command",
    [
        ["replay", "{db}", "--verify"],
        ["replay", "{db}", "0", "--fork-at", "2"],
        ["export", "{db}", "-f", "sft", "--role", "persona"],
        ["run", "--resume", "{db}", "-q"],
    ],
    ids=["verify", "fork", "export sft", "resume"],
)
def test_without_the_import_commands_that_rebuild_agents_say_to_pass_it(
    command: list[str],
    tmp_path: Path,
    forget_lab_code: Forget,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = tmp_path / "lab_code.py"
    code.write_text(LAB_CODE, encoding="utf-8")
    scenario = write_yaml(tmp_path / "interview.yaml", {**INTERVIEW, "imports": ["lab_code.py"]})
    db = tmp_path / "run.db"
    personae.run(scenario, db=db)
    before = db.read_bytes()
    forget_lab_code()
    line = one_error_line([a.replace("{db}", str(db)) for a in command], capsys)
    assert "unknown graph kind 'plug_interview'" in line
    assert f"this run imported lab_code.py (from {tmp_path})" in line
    assert "--import" in line
    assert db.read_bytes() == before


def test_without_the_import_judge_and_replay_name_what_is_missing(
    lab: Lab, tmp_path: Path, forget_lab_code: Forget, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_yaml(tmp_path / "length.yaml", LENGTH_JUDGE_FILE)
    before = lab.db.read_bytes()
    forget_lab_code()
    # what needs no code still works: stepping through the log and the flat export
    assert "turn 1/4" in ok(["replay", str(lab.db), "0", "--print", "--turn", "1"], capsys)
    assert len(ok(["export", str(lab.db)], capsys).strip().splitlines()) == 5
    line = one_error_line(["judge", str(lab.db), str(spec), "-q"], capsys)
    assert "unknown judge 'plug_length_judge'" in line and "--import" in line
    # this run had its code from --import only (nothing stored): the error still says what to do
    line = one_error_line(["replay", str(lab.db), "--verify"], capsys)
    assert "unknown graph kind 'plug_interview'" in line and "--import" in line
    assert lab.db.read_bytes() == before


# -- custom persona models ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({"moto": "typo"}, "did you mean 'motto'"), ({"shoe_size": 44}, "unknown key 'shoe_size'")],
)
def test_a_custom_persona_model_without_extra_rejects_unknown_keys(
    lab: Lab,
    extra: dict[str, Any],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    agents = dict(INTERVIEW["agents"])
    agents["host"] = {**agents["host"], "persona": {**agents["host"]["persona"], **extra}}
    scenario = write_yaml(tmp_path / "bad.yaml", {**INTERVIEW, "agents": agents})
    db = tmp_path / "never.db"
    line = one_error_line(
        ["run", str(scenario), "--import", str(lab.code), "--db", str(db), "-q"], capsys
    )
    assert expected in line and "agents.host.persona" in line
    assert not db.exists()
