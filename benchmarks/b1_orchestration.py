"""B1 orchestration overhead: how fast personae turns over when the model costs nothing.

Runs 1, 64 and 1,024 concurrent 10-turn episodes on the scripted backend (zero latency), and
separately times the three parts of a turn — the LangGraph step alone, prompt rendering alone
and the store's writes alone — so the table shows where the time goes.

    .venv/bin/python benchmarks/b1_orchestration.py [--sizes 1 64 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

from _common import report, write_scenario
from langgraph.graph import END, START, StateGraph

import personae
from personae.agents import Utterance
from personae.runner import build_agents
from personae.scenario import load_scenario, plan_episodes
from personae.backends import create_backend
from personae.store import TurnLogWriter, open_database

TURNS = 10


class _State(TypedDict):
    turn: int


def _bare_graph() -> Any:
    """The dyadic shape with nodes that do nothing: LangGraph's own cost per step."""

    async def step(state: _State) -> dict[str, int]:
        return {"turn": state["turn"] + 1}

    async def next_a(state: _State) -> str:
        return END if state["turn"] >= TURNS else "a"

    async def next_b(state: _State) -> str:
        return END if state["turn"] >= TURNS else "b"

    builder: StateGraph[_State, None, _State, _State] = StateGraph(_State)
    builder.add_node("a", step)
    builder.add_node("b", step)
    builder.add_edge(START, "a")
    builder.add_conditional_edges("a", next_b, ["b", END])
    builder.add_conditional_edges("b", next_a, ["a", END])
    return builder.compile()


async def _graph_only(episodes: int) -> float:
    graph = _bare_graph()
    start = time.perf_counter()
    await asyncio.gather(*(graph.ainvoke({"turn": 0}) for _ in range(episodes)))
    return (time.perf_counter() - start) / (episodes * TURNS)


def _render_only(scenario_path: Path, episodes: int) -> float:
    spec = load_scenario(scenario_path)
    plan = plan_episodes(spec, limit=1)[0]
    backend = create_backend("scripted")
    agents = build_agents(spec, plan.personas, dict.fromkeys(spec.agents, backend))
    names = list(agents)
    labels = [a.label for a in agents.values()]
    start = time.perf_counter()
    for e in range(episodes):
        history: list[Utterance] = []
        for turn in range(TURNS):
            agent = agents[names[turn % 2]]
            request = agent.request(history, labels, seed=turn, tags={"episode_id": str(e)})
            agent.clean("This is a reply. It has two sentences.")
            history.append(Utterance(agent.name, agent.label, f"line {turn}"))
            assert request.prompt
    return (time.perf_counter() - start) / (episodes * TURNS)


async def _store_only(folder: Path, episodes: int) -> float:
    db = folder / f"store-{episodes}.db"
    open_database(db, create=True).conn.close()
    async with TurnLogWriter(db) as writer:
        writer.insert("runs", {"run_id": "r", "scenario": "bench", "status": "running"})
        for e in range(episodes):
            writer.insert("episodes", {"episode_id": f"e{e}", "run_id": "r", "idx": e})
        await writer.flush()
        start = time.perf_counter()
        for e in range(episodes):
            for turn in range(TURNS):
                call = f"e{e}-{turn:04d}"
                writer.insert(
                    "llm_calls",
                    {
                        "call_id": call,
                        "episode_id": f"e{e}",
                        "turn_idx": turn,
                        "prompt": "p" * 2000,
                        "output": "This is a reply.",
                        "seed": turn,
                    },
                )
                writer.insert(
                    "turns",
                    {
                        "episode_id": f"e{e}",
                        "idx": turn,
                        "agent": "a",
                        "role": "client",
                        "text": "This is a reply.",
                        "call_id": call,
                    },
                )
        await writer.flush()
        return (time.perf_counter() - start) / (episodes * TURNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in args.sizes:
            scenario = write_scenario(folder, repeats=n, max_turns=TURNS, backend="scripted")
            result = personae.run(scenario, db=folder / f"run-{n}.db", concurrency=n)
            per_turn = result.elapsed_s / result.turns
            rows.append(
                {
                    "episodes in flight": n,
                    "turns": result.turns,
                    "turns/s": result.turns / result.elapsed_s,
                    "ms/turn": per_turn * 1e3,
                    "graph step ms": (graph_ms := asyncio.run(_graph_only(n)) * 1e3),
                    "personae ms": per_turn * 1e3 - graph_ms,
                    "render ms": _render_only(scenario, n) * 1e3,
                    "store ms": asyncio.run(_store_only(folder, n)) * 1e3,
                }
            )
    report(
        "b1_orchestration",
        f"B1 orchestration overhead (scripted backend, zero latency, {TURNS}-turn episodes)",
        list(rows[0]),
        rows,
        {
            "target": ">= 2,000 turns/s and < 0.5 ms per turn at 1,024 episodes",
            "graph step": "a bare LangGraph graph of the same shape with no-op async nodes",
            "personae ms": "ms/turn minus the bare graph step: personae's own cost per turn",
        },
    )


if __name__ == "__main__":
    main()
