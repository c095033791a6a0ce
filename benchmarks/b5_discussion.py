"""B5 facilitated discussions: personae against SynDisco's own discussion loop, one workload.

The workload is the shipped `discussion_facilitation` scenario, adjusted: N discussions (default
12, the six facilitation strategies x 2), 4 participants drawn from the persona pool, one seed
comment, 8 participant comments, the facilitator after every comment (never under strategy
`none`), 2 annotators rating every generated comment (no classifier baseline: it has no
SynDisco counterpart), and a scripted model: one fixed short reply after a fixed latency per call
(default 50 ms, as a remote engine). It runs three ways, one after another in one invocation:

- personae, `personae.run` with the default concurrency, every comment, call and judgment in
  SQLite;
- personae, one discussion at a time (`concurrency=1`): the sequential baseline;
- SynDisco (the PyPI package `syndisco`, GPL-3.0, kept out of this project's environment): its
  `Discussion` and `Annotation` jobs on the same participants, moderators, seed comments and
  annotators as the personae run drew, in a subprocess under the Python of its own virtual
  environment (`benchmarks/_syndisco_loop.py`), with a model object that sleeps the same
  latency and returns the same reply; every discussion and annotation written as JSON.

Without a usable SynDisco environment its row says why, and the sequential baseline (labelled as
such) is the only comparison. SynDisco 2.x needs Python >= 3.12 and its `Discussion` has no
moderator; a Python 3.11 environment gets 1.x, which has one:

    python3 -m venv .venv-syndisco && .venv-syndisco/bin/pip install syndisco
    .venv/bin/python benchmarks/b5_discussion.py [--discussions 12] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, report

import personae
from personae._shipped import scenarios_dir
from personae.agents._discussion import FORUM, community_rules, intents, strategies
from personae.scenario import Scenario, parse_scenario

REPLY = "I see your point, but I would like to hear more facts before I decide."
P_RESPOND = 0.4
_SCENARIO = "discussion_facilitation.yaml"
_PERSONA_FIELDS = ("age", "sex", "education", "occupation", "political_leaning")


def _scenario(args: argparse.Namespace) -> Scenario:
    """The shipped discussion scenario, sized by `args`, on the scripted backend."""
    source = scenarios_dir() / _SCENARIO
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    strategy_count = len(data["grid"]["facilitator.strategy"])
    data.update(
        backend=f"scripted?latency_s={args.latency}",
        backend_options={"replies": [REPLY]},
        repeats=math.ceil(args.discussions / strategy_count),
        episodes=args.discussions,
    )
    graph = data["graph"]
    graph.update(max_turns=args.turns, policy={"kind": "respond", "p": P_RESPOND})
    graph["seed_comments"]["per_discussion"] = [1, 1]  # SynDisco's job takes one seed opinion
    agents = data["agents"]
    agents["participant"]["count"] = args.participants
    agents["annotator"]["count"] = args.annotators
    del agents["toxicity_baseline"]
    return parse_scenario(data, source=str(source), base_dir=source.parent)


def _personae(scenario: Scenario, db: Path, concurrency: int | None) -> dict[str, Any]:
    start = time.perf_counter()
    result = personae.run(scenario, db=db, concurrency=concurrency)
    elapsed = time.perf_counter() - start
    assert result.failed == 0 and result.complete == result.episodes, result
    conn = sqlite3.connect(db)
    (comments,) = conn.execute("SELECT count(*) FROM turns WHERE kind = 'line'").fetchone()
    (calls,) = conn.execute("SELECT count(*) FROM llm_calls").fetchone()
    conn.close()
    return {"discussions": result.complete, "comments": comments, "calls": calls,
            "elapsed": elapsed}  # fmt: skip


def _facts(persona: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    return [f"{f}: {persona[f]}" for f in fields if persona.get(f) not in (None, "", [])]


def _rubric_text(rubric: dict[str, Any]) -> str:
    lines = [rubric["instructions"].strip()]
    for d in rubric["dimensions"]:
        anchors = "; ".join(f"{k} = {v}" for k, v in d["anchors"].items())
        lines.append(f"{d['name']} ({d['scale'][0]}-{d['scale'][1]}): {d['description']} "
                     f"({anchors})")  # fmt: skip
    return "\n".join(lines)


def _moderator(persona: dict[str, Any]) -> dict[str, Any] | None:
    strategy = strategies()[persona["strategy"]]
    if persona["strategy"] == "none":
        return None
    text = strategy["instructions"].strip()
    if strategy.get("show_rules"):
        text += "\nCommunity rules:\n" + "\n".join(f"- {r}" for r in community_rules())
    return {"name": persona["username"], "attributes": [], "instructions": text}


def _syndisco_spec(scenario: Scenario, db: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The personae run's discussions (who took part, who moderated, which seed comment, who
    annotated) as SynDisco actors: the same workload for its loop."""
    roles = {name: spec.role for name, spec in scenario.agents.items()}
    conn = sqlite3.connect(db)
    seeds = {
        episode: (agent, text)
        for episode, agent, text in conn.execute(
            "SELECT episode_id, agent, text FROM turns WHERE kind = 'seed' ORDER BY idx"
        )
    }
    discussions = []
    for episode, personas_json in conn.execute(
        "SELECT episode_id, personas_json FROM episodes ORDER BY idx"
    ):
        personas = json.loads(personas_json)
        by_role = {role: [n for n in personas if roles[n] == role]
                   for role in ("participant", "facilitator", "annotator")}  # fmt: skip
        participants = [
            {"name": p["username"],
             "attributes": [
                 *_facts(p, _PERSONA_FIELDS),
                 f"personality: {', '.join(p['personality'])}",
                 f"special_instructions: {p['special_instructions'].strip()}"],
             "instructions": intents()[p["intent"]]["instructions"].strip()}
            for p in (personas[n] for n in by_role["participant"])
        ]  # fmt: skip
        annotators = [
            {"name": a["name"],
             "attributes": [*_facts(a, _PERSONA_FIELDS), a["description"].strip()],
             "instructions": _rubric_text(a["rubric"])}
            for a in (personas[n] for n in by_role["annotator"])
        ]  # fmt: skip
        poster, text = seeds[episode]
        discussions.append({
            "participants": participants,
            "moderator": _moderator(personas[by_role["facilitator"][0]]),
            "seed": {"name": personas[poster]["username"], "text": text},
            "annotators": annotators,
        })  # fmt: skip
    conn.close()
    assert scenario.agents["participant_1"].window == scenario.agents["facilitator"].window
    return {
        "latency_s": args.latency,
        "reply": REPLY,
        "seed": scenario.seed,
        "context": FORUM,
        "p_respond": P_RESPOND,
        "turns": args.turns,
        "window": scenario.agents["participant_1"].window,
        "annotator_window": scenario.agents["annotator_1"].window,
        "discussions": discussions,
    }


def _syndisco(python: Path, spec: dict[str, Any], folder: Path) -> dict[str, Any] | str:
    """SynDisco's counts and time, or why it could not run."""
    if not python.exists():
        return (f"no SynDisco environment at {python} (create one: python3 -m venv "
                ".venv-syndisco && .venv-syndisco/bin/pip install syndisco)")  # fmt: skip
    spec_path, out = folder / "syndisco-spec.json", folder / "syndisco"
    out.mkdir()
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    loop = ROOT / "benchmarks" / "_syndisco_loop.py"
    done = subprocess.run([str(python), str(loop), str(spec_path), str(out)],
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    lines = done.stdout.strip().splitlines()
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the SynDisco loop failed (exit {done.returncode}): {tail}"
    if "error" in data:
        return str(data["error"])
    return data


def _row(label: str, counts: dict[str, Any], personae_rate: float) -> dict[str, Any]:
    s = counts["elapsed"]
    rate = counts["discussions"] / s
    return {
        "loop": label,
        "discussions": counts["discussions"],
        "comments": counts["comments"],
        "calls": counts["calls"],
        "s": s,
        "discussions/s": rate,
        "comments/s": counts["comments"] / s,
        "calls/s": counts["calls"] / s,
        "personae ÷ this": personae_rate / rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discussions", type=int, default=12)
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--turns", type=int, default=8, help="participant comments")
    parser.add_argument("--annotators", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per model call")
    parser.add_argument("--syndisco-python", type=Path,
                        default=ROOT / ".venv-syndisco" / "bin" / "python")  # fmt: skip
    args = parser.parse_args()
    scenario = _scenario(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ours = _personae(scenario, folder / "personae.db", None)
        sequential = _personae(scenario, folder / "sequential.db", 1)
        spec = _syndisco_spec(scenario, folder / "personae.db", args)
        theirs = _syndisco(args.syndisco_python, spec, folder)
    rate = ours["discussions"] / ours["elapsed"]
    rows = [
        _row("personae", ours, rate),
        _row("personae, 1 at a time", sequential, rate),
    ]
    notes: dict[str, Any] = {
        "workload": f"{args.discussions} discussions, {args.participants} participants, "
        f"{args.turns} participant comments, a facilitator, {args.annotators} annotators, "
        f"one seed comment; scripted model, {args.latency * 1e3:.0f} ms a call",
        "rows": "personae: default concurrency; 1 at a time: concurrency=1, the sequential "
        "baseline; SynDisco: its Discussion and Annotation jobs, one prompt per call",
        "calls": "personae's annotators rate the generated comments; SynDisco's Annotation "
        "job also rates the seed comment (one more call per annotator and discussion)",
    }
    if isinstance(theirs, str):
        notes["SynDisco"] = f"not run: {theirs}"
        notes["ratio"] = (
            "against the sequential baseline only (personae at concurrency 1, not SynDisco)"
        )
    else:
        rows.append(_row(f"SynDisco {theirs['syndisco']}", theirs, rate))
    report("b5_discussion", f"B5 facilitated discussions (scripted model, "
           f"{args.latency * 1e3:.0f} ms a call, every comment persisted)", list(rows[0]), rows,
           notes)  # fmt: skip


if __name__ == "__main__":
    main()
