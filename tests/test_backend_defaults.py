"""Safe defaults of the openai backend against servers that behave like llama.cpp, vLLM and a
hosted API (a fake OpenAI-compatible server on 127.0.0.1): the render mode and the
structured-output dialect are found out at start, or the run stops with one line naming the
option; a constrained-choice answer off its list is warned about once per agent and kept in the
turn's hidden_json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, db_rows
from fake_openai import FREE_TEXT, FakeServer
from group_helpers import group_scenario

from personae.backends import GenerationRequest, Message
from personae.backends._openai import OpenAIBackend
from personae.backends._probe import PROBE_CHOICES
from personae.errors import UserError


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    with FakeServer(request.param) as fake:
        yield fake


@pytest.mark.parametrize(
    ("server", "render", "dialect"),
    [
        ("llamacpp-base", "transcript", "llamacpp"),
        ("llamacpp-chat", "chat", "llamacpp"),
        ("vllm-base", "transcript", "vllm"),
        ("vllm-chat", "chat", "vllm"),
        ("hosted", "chat", "openai"),
    ],
    indirect=["server"],
)
async def test_render_mode_and_dialect_are_found_out_at_start(
    server: FakeServer, render: str, dialect: str
) -> None:
    async with OpenAIBackend(server.url) as backend:
        assert (backend.render_mode, backend._structured) == (render, dialect)
        asked = GenerationRequest(prompt="Answer:", choices=("yes", "no"))
        if render == "chat":
            asked = GenerationRequest(messages=(Message("user", "?"),), choices=("yes", "no"))
        result = await backend.generate(asked)
    assert result.text == "yes"  # the dialect found is the one the server honours
    assert backend.backend_id == "openai:fake-model"


@pytest.mark.parametrize("server", ["llamacpp-base"], indirect=True)
async def test_a_base_model_on_llamacpp_is_told_by_its_fallback_template(
    server: FakeServer,
) -> None:
    """llama.cpp shows its ChatML fallback for a model without a template; the markers are not
    tokens of the model, so it is a base model (the bug: chat rendering, template junk)."""
    async with OpenAIBackend(server.url, model="m") as backend:
        assert backend.render_mode == "transcript"
    assert "POST /tokenize" in server.paths()
    assert not any(p == "POST /v1/chat/completions" for p in server.paths())


@pytest.mark.parametrize("server", ["vllm-base"], indirect=True)
async def test_the_dialect_is_checked_with_one_constrained_request(server: FakeServer) -> None:
    async with OpenAIBackend(server.url, model="m", render="transcript"):
        pass
    posts = [body for method, path, body in server.requests if method == "POST"]
    assert len(posts) == 1  # render given: only the dialect check
    assert posts[0]["structured_outputs"] == {"choice": list(PROBE_CHOICES)}
    assert posts[0]["max_tokens"] <= 8


@pytest.mark.parametrize("server", ["llamacpp-chat"], indirect=True)
async def test_given_options_are_taken_without_asking(server: FakeServer) -> None:
    async with OpenAIBackend(server.url, model="m", render="chat", structured="llamacpp") as b:
        assert (b.render_mode, b._structured) == ("chat", "llamacpp")
    assert server.requests == []


@pytest.mark.parametrize("server", ["plain"], indirect=True)
async def test_a_server_that_constrains_nothing_stops_the_start_naming_the_option(
    server: FakeServer,
) -> None:
    backend = OpenAIBackend(server.url, model="m")
    with pytest.raises(UserError) as info:
        await backend.start()
    line = str(info.value)
    assert "\n" not in line and "structured=" in line and "qx7" in line
    assert FREE_TEXT[:10] in line  # what it answered instead
    assert backend._client is None  # nothing left open


@pytest.mark.parametrize("server", ["broken-chat"], indirect=True)
async def test_a_render_mode_that_cannot_be_told_stops_the_start_naming_the_option(
    server: FakeServer,
) -> None:
    with pytest.raises(UserError, match=r"render=chat.*render=transcript.*render:") as info:
        await OpenAIBackend(server.url, model="m").start()
    assert "HTTP 500" in str(info.value) and "engine crashed" in str(info.value)
    # given the render mode, the same server starts (its completions endpoint works)
    async with OpenAIBackend(server.url, model="m", render="transcript") as backend:
        assert backend._structured == "openai"


def test_auto_is_the_default_and_bad_values_are_refused() -> None:
    backend = OpenAIBackend("http://h/v1", render="auto", structured="auto")
    assert backend._structured is None and not backend._render_given
    for options in ({"render": "screenplay"}, {"structured": "outlines"}):
        with pytest.raises(UserError):
            OpenAIBackend("http://h/v1", **options)  # type: ignore[arg-type]


# -- a whole run on a server that ignores the dialect it was told ---------------------------


def _selector_scenario(tmp_path: Path, backend: str) -> Path:
    data = group_scenario(("ann", "ben", "cal"), backend=backend, max_turns=5, repeats=2)
    data["graph"]["policy"] = {"kind": "selector"}
    path = tmp_path / "selector.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("server", ["llamacpp-chat"], indirect=True)
def test_an_answer_off_its_choices_is_warned_once_per_agent_and_kept(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`structured=vllm` against a llama.cpp server: the selector's answers come back as free
    text. The run goes on (the policy falls back), one warning names the agent, and every
    such answer is in its turn's hidden_json."""
    spec = f"openai:{server.url}?model=m&render=chat&structured=vllm&max_concurrency=1"
    db = tmp_path / "run.db"
    code, _, err = cli(["run", str(_selector_scenario(tmp_path, spec)), "--db", str(db), "-q"],
                       capsys)  # fmt: skip
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err  # 2 episodes x 4 selections, one warning for the agent
    assert "ann's answer 'Paris, of course.'" in warnings[0]
    assert "not one of the allowed choices" in warnings[0] and "structured=" in warnings[0]
    turns = db_rows(db, "SELECT idx, hidden_json, decision_json FROM turns ORDER BY idx")
    marked = [t for t in turns if t["hidden_json"] and "off_choice" in t["hidden_json"]]
    assert marked and all(
        json.loads(t["decision_json"])["rule"] == "selector_fallback" for t in marked
    )
    kept: dict[str, Any] = json.loads(marked[0]["hidden_json"])["off_choice"][0]
    assert kept["output"] == FREE_TEXT and kept["agent"] == "ann"
    assert set(kept["choices"]) <= {"Ann", "Ben", "Cal"}


@pytest.mark.parametrize("server", ["llamacpp-chat"], indirect=True)
def test_with_the_defaults_the_same_server_constrains_every_answer(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"openai:{server.url}?model=m&max_concurrency=1"
    db = tmp_path / "run.db"
    code, _, err = cli(["run", str(_selector_scenario(tmp_path, spec)), "--db", str(db), "-q"],
                       capsys)  # fmt: skip
    assert code == 0, err
    assert "warning:" not in err
    decisions = db_rows(db, "SELECT decision_json FROM turns WHERE decision_json IS NOT NULL")
    rules = {json.loads(d["decision_json"])["rule"] for d in decisions}
    assert "selector" in rules and "selector_fallback" not in rules
