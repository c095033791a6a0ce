"""B2 engine saturation: generated tok/s through personae vs. the same kind of requests sent
straight to the same engine, in one process, one engine instance, same concurrency.

Each framework pass runs N concurrent episodes through personae (LangGraph, agents, turn log).
Each raw pass replays the prompts recorded by the previous framework pass (other seed, so the
engine's prefix cache is in the same state a new run meets) directly to the engine: one chain
of sequential requests per episode, N chains at once — the dependency structure of a
conversation without any framework. Ratio = framework tok/s / raw tok/s (target >= 0.90).

    .venv/bin/python benchmarks/b2_engine_saturation.py [--episodes 16] [--turns 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from _common import report, write_scenario

import personae
from personae.backends import EmbeddedBackend, GenerationRequest


def _recorded(db: Path) -> list[list[GenerationRequest]]:
    chains: dict[str, list[GenerationRequest]] = {}
    conn = sqlite3.connect(db)
    for episode, prompt, params, seed in conn.execute(
        "SELECT episode_id, prompt, params_json, seed FROM llm_calls ORDER BY episode_id, turn_idx"
    ):
        p = json.loads(params)
        chains.setdefault(episode, []).append(
            GenerationRequest(
                prompt=prompt,
                temperature=p["temperature"],
                top_p=p["top_p"],
                presence_penalty=p["presence_penalty"],
                frequency_penalty=p["frequency_penalty"],
                max_tokens=p["max_tokens"],
                stop=tuple(p["stop"]),
                seed=seed,
            )
        )
    return list(chains.values())


async def _raw(engine: EmbeddedBackend, chains: list[list[GenerationRequest]]) -> tuple[int, float]:
    async def chain(requests: list[GenerationRequest]) -> int:
        return sum([(await engine.generate(r)).completion_tokens for r in requests])

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(chain(c) for c in chains)))
    return tokens, time.perf_counter() - start


async def _bench(episodes: int, turns: int, pairs: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    async with EmbeddedBackend(n_parallel=episodes, ctx_per_slot=2048) as engine:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            scenario = write_scenario(folder, repeats=episodes, max_turns=turns, backend="embedded")
            previous = folder / "warmup.db"
            await personae.arun(
                scenario, backend=engine, db=previous, seed=100, concurrency=episodes
            )
            for i in range(pairs):
                db = folder / f"fw{i}.db"
                fw = await personae.arun(
                    scenario, backend=engine, db=db, seed=i, concurrency=episodes
                )
                raw_tokens, raw_s = await _raw(engine, _recorded(previous))
                fw_rate, raw_rate = fw.completion_tokens / fw.elapsed_s, raw_tokens / raw_s
                rows.append(
                    {
                        "pair": i + 1,
                        "framework tokens": fw.completion_tokens,
                        "framework tok/s": fw_rate,
                        "raw tokens": raw_tokens,
                        "raw tok/s": raw_rate,
                        "ratio": fw_rate / raw_rate,
                    }
                )
                previous = db
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    rows = asyncio.run(_bench(args.episodes, args.turns, args.pairs))
    mean = sum(float(r["ratio"]) for r in rows) / len(rows)  # type: ignore[arg-type]
    report(
        "b2_engine_saturation",
        f"B2 engine saturation (embedded llama.cpp, Gemma 3 270M, {args.episodes} episodes "
        f"in flight, n_parallel={args.episodes}, {args.turns} turns)",
        list(rows[0]),
        rows,
        {"mean ratio framework/raw": mean, "target": ">= 0.90"},
    )


if __name__ == "__main__":
    main()
