"""The vllm backend without vLLM: configuration errors, and the request/result mapping on a fake
engine. The real-engine test needs a GPU and lives elsewhere."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from personae.backends._base import GenerationRequest, Message
from personae.backends._structured import json_schema_grammar
from personae.backends._vllm import VLLMBackend
from personae.errors import UserError


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
async def test_missing_vllm_is_user_error_with_install_hint(tmp_path: Path) -> None:
    backend = VLLMBackend(str(tmp_path))
    with pytest.raises(UserError, match="vLLM is not installed") as info:
        await backend.start()
    assert "pip install 'personae[vllm]'" in str(info.value)


async def test_blocked_vllm_import_is_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    with pytest.raises(UserError, match="backend vllm: vLLM is not installed"):
        await VLLMBackend(str(tmp_path)).start()


def test_nonexistent_model_path_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model path not found"):
        VLLMBackend(str(tmp_path / "no-such-model"))


def test_bad_render_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="render"):
        VLLMBackend(str(tmp_path), render="fancy")


def test_ids_and_parallelism(tmp_path: Path) -> None:
    model = tmp_path / "Tiny-Instruct"
    model.mkdir()
    backend = VLLMBackend(str(model), max_num_seqs=16, render="transcript")
    assert backend.backend_id == "vllm:Tiny-Instruct"
    assert backend.parallelism == 16 and backend.render_mode == "transcript"


# --- a fake vLLM, just enough to exercise the mapping -------------------------------------


@dataclass
class _Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None = "stop"
    logprobs: list[dict[int, _Logprob]] | None = None


@dataclass
class _Output:
    prompt_token_ids: list[int]
    outputs: list[_Completion]
    num_cached_tokens: int | None = 5
    finished: bool = True


@dataclass
class _Params:
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Tokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        assert kwargs == {"tokenize": False, "add_generation_prompt": True}
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class _Engine:
    instances: ClassVar[list[_Engine]] = []

    def __init__(self, args: Any) -> None:
        self.args = args
        self.calls: list[tuple[str, Any, str]] = []
        self.shut = 0
        _Engine.instances.append(self)

    @classmethod
    def from_engine_args(cls, args: Any) -> _Engine:
        return cls(args)

    async def get_tokenizer(self) -> _Tokenizer:  # a coroutine, as in vLLM < 0.11
        return _Tokenizer()

    async def generate(self, prompt: str, params: Any, request_id: str) -> AsyncIterator[_Output]:
        self.calls.append((prompt, params, request_id))
        lp = [
            {7: _Logprob(-0.1, 1, "Hi"), 8: _Logprob(-2.5, 2, "Yo")},
            {9: _Logprob(-0.3, 1, "!"), 3: _Logprob(-4.0, 7, "?")},
        ]
        yield _Output([1, 2, 3], [_Completion("Hi", [7], None)], finished=False)
        yield _Output([1, 2, 3], [_Completion("Hi!", [7, 3], "length", lp)])

    def shutdown(self) -> None:
        self.shut += 1


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[_Engine]:
    def module(name: str, **attrs: Any) -> None:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)

    def structured(**kwargs: Any) -> dict[str, Any]:
        return {"structured": kwargs}

    module("vllm", SamplingParams=lambda **kw: _Params(kw))
    module("vllm.engine")
    module("vllm.engine.arg_utils", AsyncEngineArgs=lambda **kw: kw)
    module("vllm.v1")
    module("vllm.v1.engine")
    module("vllm.v1.engine.async_llm", AsyncLLM=_Engine)
    module(
        "vllm.sampling_params",
        StructuredOutputsParams=structured,
        RequestOutputKind=types.SimpleNamespace(FINAL_ONLY="final"),
    )
    _Engine.instances.clear()
    return _Engine


async def test_fake_engine_generate_mapping(tmp_path: Path, fake_vllm: type[_Engine]) -> None:
    backend = VLLMBackend(str(tmp_path), max_model_len=1024, seed=0)
    async with backend:
        await backend.start()  # idempotent
        engine = fake_vllm.instances[0]
        assert len(fake_vllm.instances) == 1
        assert engine.args["model"] == str(tmp_path) and engine.args["seed"] == 0
        assert engine.args["max_model_len"] == 1024 and engine.args["enable_prefix_caching"]
        result = await backend.generate(
            GenerationRequest(
                messages=(Message("system", "Be brief."), Message("user", "Hello")),
                choices=("Hi!", "Bye"),
                stop=("\n",),
                seed=3,
                logprobs=1,
            )
        )
        prompt, params, request_id = engine.calls[0]
    assert engine.shut == 1
    assert prompt == "<system>Be brief.<user>Hello<assistant>" and request_id
    assert params.kwargs["structured_outputs"] == {"structured": {"choice": ["Hi!", "Bye"]}}
    assert params.kwargs["stop"] == ["\n"] and params.kwargs["seed"] == 3
    assert params.kwargs["logprobs"] == 1 and params.kwargs["output_kind"] == "final"
    assert result.text == "Hi!" and result.finish_reason == "length"
    assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (3, 2, 5)
    assert result.logprobs is not None
    assert [(t.token, t.logprob, t.top) for t in result.logprobs] == [
        ("Hi", -0.1, {"Hi": -0.1}),
        ("?", -4.0, {"!": -0.3}),
    ]
    await backend.close()  # safe twice
    assert engine.shut == 1


async def test_fake_engine_prompt_and_json_schema(tmp_path: Path, fake_vllm: type[_Engine]) -> None:
    schema = {"type": "object", "properties": {"mood": {"enum": ["calm", "upset"]}}}
    async with VLLMBackend(str(tmp_path)) as backend:
        result = await backend.generate(GenerationRequest(prompt="Once", json_schema=schema))
        prompt, params, _ = fake_vllm.instances[0].calls[0]
    assert prompt == "Once"
    grammar = json_schema_grammar(schema)  # bounded; the per-request whitespace flag is ignored
    assert params.kwargs["structured_outputs"] == {"structured": {"grammar": grammar}}
    assert params.kwargs["logprobs"] is None and params.kwargs["stop"] is None
    assert result.logprobs is not None  # the fake always reports them


async def test_fake_engine_grammar(tmp_path: Path, fake_vllm: type[_Engine]) -> None:
    from personae.environments import ShellEnvironment
    from personae.environments._actions import action_grammar, with_loop_actions

    grammar = action_grammar(with_loop_actions(ShellEnvironment.actions))
    async with VLLMBackend(str(tmp_path)) as backend:
        await backend.generate(GenerationRequest(prompt="Action:", grammar=grammar))
        _, params, _ = fake_vllm.instances[0].calls[0]
    assert params.kwargs["structured_outputs"] == {"structured": {"grammar": grammar.gbnf()}}


async def test_bad_engine_option_is_user_error(tmp_path: Path, fake_vllm: type[_Engine]) -> None:
    def strict_args(*, model: str) -> None:
        raise TypeError("unexpected keyword argument 'max_model_len'")

    sys.modules["vllm.engine.arg_utils"].AsyncEngineArgs = strict_args  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="bad engine option"):
        await VLLMBackend(str(tmp_path)).start()


def test_built_from_a_backend_spec(tmp_path: Path) -> None:
    from personae.backends._registry import create_backend

    backend = create_backend(f"vllm:{tmp_path}?max_num_seqs=8&enforce_eager=true")
    assert isinstance(backend, VLLMBackend) and backend.parallelism == 8
