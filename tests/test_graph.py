"""The dyadic graph and the runner: turn taking, ending, retries, failures and the turn log."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import base_scenario, db_rows, file_snapshot

from personae import RunLog, arun, run
from personae.agents import Client, Counselor, Utterance
from personae.backends import (
    Backend,
    BackendError,
    GenerationRequest,
    GenerationResult,
    ScriptedBackend,
)
from personae.errors import UserError
from personae.graphs import EMPTY_UTTERANCE, Episode, build_dyadic_graph
from personae.scenario import load_scenario, plan_episodes

Pair = Callable[..., tuple[Counselor, Client]]


async def _play(
    pair: tuple[Counselor, Client],
    backend: Backend,
    *,
    max_turns: int,
    opener: str = "counselor",
    end_on_farewell: bool = True,
    stop_when: Callable[[Any], bool] | None = None,
) -> tuple[Episode, dict[str, Any]]:
    counselor, client = pair
    agents = {"counselor": counselor, "client": client}
    episode = Episode(
        episode_id="ep-direct",
        agents=agents,  # type: ignore[arg-type]
        backends={name: backend for name in agents},
        writer=None,
        run_seed=11,
        stop_when=stop_when,
    )
    second = "client" if opener == "counselor" else "counselor"
    graph = build_dyadic_graph(opener, second, max_turns=max_turns, end_on_farewell=end_on_farewell)
    state = await graph.ainvoke({"end_reason": None}, context=episode)
    return episode, state


def _only_episode(db: Path) -> tuple[dict[str, Any], list[Any], list[dict[str, Any]]]:
    with RunLog(db) as log:
        (episode,) = log.episodes()
        return episode, log.turns(episode["episode_id"]), log.calls(episode["episode_id"])


# -- turn taking and ending (graph level) ---------------------------------------------------


async def test_agents_alternate_starting_with_the_opener(make_pair: Pair) -> None:
    pair = make_pair()
    episode, state = await _play(pair, ScriptedBackend(), max_turns=7, opener="client")
    speakers = [u.agent for u in episode.history]
    assert speakers == ["client", "counselor"] * 3 + ["client"]
    assert state["end_reason"] == "max_turns"
    assert episode.turns_taken == 7
    # the client has no fixed opening line, so its first line was generated
    assert episode.history[0].text == "This is client, turn 0."


async def test_counselor_opens_with_its_personas_line_and_runs_to_max_turns(
    make_pair: Pair,
) -> None:
    counselor, client = make_pair()
    episode, state = await _play((counselor, client), ScriptedBackend(), max_turns=5)
    assert [u.agent for u in episode.history] == [
        "counselor",
        "client",
        "counselor",
        "client",
        "counselor",
    ]
    assert episode.history[0].text == counselor.profile.opening
    assert state == {"end_reason": "max_turns"}
    assert episode.turns_taken == 5


async def test_graph_state_holds_no_utterance_text(make_pair: Pair) -> None:
    marker = "A rather long and very distinctive sentence that only lives in the history."
    backend = ScriptedBackend({"client": [marker], "counselor": ["Go on."]})
    episode, state = await _play(make_pair(), backend, max_turns=6)
    assert marker in [u.text for u in episode.history]  # the lines live in the Episode ...
    assert set(state) == {"end_reason"}  # ... and the graph state stays tiny
    assert marker not in repr(state) and "Go on." not in repr(state)


async def test_counselor_farewell_ends_the_episode_early(make_pair: Pair) -> None:
    backend = ScriptedBackend(
        {"counselor": ["What brings you here?", "Goodbye, take care."], "client": ["A letter."]}
    )
    episode, state = await _play(make_pair(), backend, max_turns=12)
    assert state["end_reason"] == "farewell"
    assert len(episode.history) == 5
    assert episode.history[-1].text == "Goodbye, take care."


async def test_farewell_is_ignored_when_end_on_farewell_is_off(make_pair: Pair) -> None:
    backend = ScriptedBackend({"counselor": ["Goodbye, take care."], "client": ["Bye."]})
    episode, state = await _play(make_pair(), backend, max_turns=6, end_on_farewell=False)
    assert state["end_reason"] == "max_turns"
    assert len(episode.history) == 6


async def test_stop_predicate_ends_the_episode(make_pair: Pair) -> None:
    backend = ScriptedBackend({"client": ["Fine.", "It's about the bank letter."]})

    def stop(history: list[Utterance]) -> bool:
        return "bank" in history[-1].text

    episode, state = await _play(make_pair(), backend, max_turns=12, stop_when=stop)
    assert state["end_reason"] == "predicate"
    assert [u.text for u in episode.history][-1] == "It's about the bank letter."
    assert len(episode.history) == 4


async def test_empty_output_is_retried_once_with_a_new_seed(make_pair: Pair) -> None:
    requests: list[GenerationRequest] = []

    def reply(request: GenerationRequest) -> str:
        requests.append(request)
        if (
            request.tags["agent"] == "client"
            and len([r for r in requests if r.tags["agent"] == "client"]) == 1
        ):
            return "  \n "
        return "Okay."

    episode, _ = await _play(make_pair(), ScriptedBackend(reply), max_turns=2)
    assert episode.history[1].text == "Okay."
    client_calls = [r for r in requests if r.tags["agent"] == "client"]
    assert len(client_calls) == 2
    assert client_calls[0].seed != client_calls[1].seed


async def test_failing_backend_raises_out_of_the_graph(make_pair: Pair) -> None:
    class Broken(Backend):
        calls = 0

        async def generate(self, request: GenerationRequest) -> GenerationResult:
            Broken.calls += 1
            raise BackendError("engine on fire")

    counselor, client = make_pair()
    agents = {"counselor": counselor, "client": client}
    episode = Episode("ep", agents, {n: Broken() for n in agents}, None, retries=2)  # type: ignore[arg-type]
    graph = build_dyadic_graph("counselor", "client", max_turns=4)
    with pytest.raises(BackendError, match="engine on fire"):
        await graph.ainvoke({"turn": 0, "end_reason": None}, context=episode)
    assert Broken.calls == 2  # retried, then gave up
    assert [u.agent for u in episode.history] == ["counselor"]  # only the fixed opening


# -- through the runner: what lands in the database -----------------------------------------


def test_every_generated_turn_has_its_llm_call(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    data = base_scenario()
    data["agents"]["counselor"]["sampling"] = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 50}
    db = tmp_path / "run.db"
    result = run(write_scenario(data), db=db)
    assert result.db_path == db and result.episodes == 1 and result.complete == 1
    episode, turns, calls = _only_episode(db)
    assert episode["status"] == "complete" and episode["end_reason"] == "max_turns"
    assert episode["n_turns"] == len(turns) == 6 == result.turns
    assert [t.idx for t in turns] == list(range(6))
    assert [t.agent for t in turns] == ["counselor", "client"] * 3
    assert turns[0].call_id is None and turns[0].hidden == {"scripted_opening": True}
    by_id = {c["call_id"]: c for c in calls}
    assert len(calls) == 5
    for turn in turns[1:]:
        call = by_id[turn.call_id]
        assert call["turn_idx"] == turn.idx and call["agent"] == turn.agent
        assert call["output"] == turn.text
        assert call["backend"] == "scripted"
        assert isinstance(call["seed"], int)
        assert call["prompt"] and call["prompt"].endswith(f"\n{turn.role.title()}:")
        assert call["prompt_tokens"] > 0 and call["completion_tokens"] > 0
        params = json.loads(call["params_json"])
        expected_t = 0.3 if turn.agent == "counselor" else 0.8
        assert params["temperature"] == expected_t
        assert "\nCounselor:" in params["stop"] and "\nClient:" in params["stop"]
    assert len({c["seed"] for c in calls}) == len(calls)  # no two calls share a seed
    assert result.prompt_tokens == sum(c["prompt_tokens"] for c in calls)
    assert result.completion_tokens == sum(c["completion_tokens"] for c in calls)
    # the logged prompts are prefix-stable too: each agent's next prompt extends its last one
    for agent in ("counselor", "client"):
        prompts = [c["prompt"] for c in calls if c["agent"] == agent]
        assert all(b.startswith(a) for a, b in pairwise(prompts))


def test_chat_render_logs_messages(write_scenario: Callable[..., Path], tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    run(write_scenario(render="chat"), db=db)
    _, turns, calls = _only_episode(db)
    assert all(c["render_mode"] == "chat" and c["prompt"] is None for c in calls)
    messages = json.loads(calls[-1]["messages_json"])
    assert messages[0]["role"] == "system"
    assert messages[-1] == {"role": "user", "content": turns[-2].text}


def test_scripted_farewell_from_scenario_replies(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_scenario(
        graph={"kind": "dyadic", "opener": "counselor", "max_turns": 12},
        backend_options={
            "replies": {
                "counselor": ["What happened this week?", "Goodbye, take care."],
                "client": ["I found a letter."],
            }
        },
    )
    db = tmp_path / "bye.db"
    result = run(path, db=db)
    episode, turns, _ = _only_episode(db)
    assert episode["end_reason"] == "farewell"
    assert episode["n_turns"] == 5 == len(turns) == result.turns
    assert turns[-1].agent == "counselor" and turns[-1].text == "Goodbye, take care."


def test_stop_when_predicate_through_run(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    db = tmp_path / "stop.db"
    run(write_scenario(), db=db, stop_when=lambda history: len(history) >= 3)
    episode, turns, _ = _only_episode(db)
    assert episode["end_reason"] == "predicate"
    assert episode["status"] == "complete"
    assert len(turns) == 3


def test_empty_output_is_logged_as_placeholder_with_hidden_flag(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_scenario(backend_options={"replies": {"client": ["   "]}})
    db = tmp_path / "empty.db"
    result = run(path, db=db)
    assert result.complete == 1
    _, turns, calls = _only_episode(db)
    client_turns = [t for t in turns if t.agent == "client"]
    assert len(client_turns) == 3
    for turn in client_turns:
        assert turn.text == EMPTY_UTTERANCE == "..."
        assert turn.hidden == {"empty_output": True}
        attempts = [c for c in calls if c["turn_idx"] == turn.idx]
        assert len(attempts) == 2  # tried once more before giving up
        assert attempts[0]["seed"] != attempts[1]["seed"]
        assert turn.call_id in {c["call_id"] for c in attempts}
    # the counselor kept talking to the silent client
    assert [t.agent for t in turns] == ["counselor", "client"] * 3
    assert all(t.text != "..." for t in turns if t.agent == "counselor")


class _FailFor(Backend):
    """Raises BackendError for one episode (or for the first call of each episode when
    `target` is 'first-call'); otherwise replies like the scripted backend."""

    backend_id = "unit-fail"
    render_mode = "transcript"

    def __init__(self, target: str | None) -> None:
        self.target = target
        self.inner = ScriptedBackend()
        self.seen: set[str] = set()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        episode_id = request.tags["episode_id"]
        if self.target == "first-call":
            if episode_id not in self.seen:
                self.seen.add(episode_id)
                raise BackendError("transient hiccup")
        elif episode_id == self.target:
            raise BackendError(f"engine refused episode {episode_id}")
        return await self.inner.generate(request)


@pytest.fixture
def fail_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the `unit-fail` backend kind for one test only."""
    from personae.backends._registry import BACKENDS

    monkeypatch.setitem(BACKENDS._entries, "unit-fail", lambda target, options: _FailFor(target))


@pytest.mark.usefixtures("fail_backend")
def test_failing_episode_is_marked_failed_while_others_complete(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_scenario(grid={"client.style": ["plain", "upset", "reserved"]})
    plans = plan_episodes(load_scenario(path))
    doomed = plans[1].episode_id
    db = tmp_path / "fail.db"
    result = run(path, db=db, backend=f"unit-fail:{doomed}")
    assert (result.episodes, result.complete, result.failed) == (3, 2, 1)
    assert "(1 failed)" in result.line()
    with RunLog(db) as log:
        episodes = {e["episode_id"]: e for e in log.episodes()}
        assert episodes[doomed]["status"] == "failed"
        assert "BackendError" in episodes[doomed]["error"]
        assert f"engine refused episode {doomed}" in episodes[doomed]["error"]
        for plan in (plans[0], plans[2]):
            row = episodes[plan.episode_id]
            assert row["status"] == "complete" and row["error"] is None
            assert len(log.turns(plan.episode_id)) == 6
        (run_row,) = log.runs()
        assert run_row["status"] == "partial"  # some episodes failed: not reported complete
    assert result.status == "partial"


@pytest.mark.usefixtures("fail_backend")
def test_transient_backend_error_is_retried_and_recorded(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    db = tmp_path / "retry.db"
    result = run(write_scenario(), db=db, backend="unit-fail:first-call")
    assert result.complete == 1 and result.failed == 0
    _, turns, calls = _only_episode(db)
    assert len(turns) == 6
    assert calls[0]["turn_idx"] == 1 and calls[0]["attempts"] == 2
    assert all(c["attempts"] == 1 for c in calls[1:])


def test_runs_are_reproducible(write_scenario: Callable[..., Path], tmp_path: Path) -> None:
    path = write_scenario(grid={"client.style": ["plain", "verbose"]})
    dumps = []
    for name in ("a.db", "b.db"):
        run(path, db=tmp_path / name)
        with RunLog(tmp_path / name) as log:
            dumps.append(
                [
                    (
                        e["episode_id"],
                        [(t.agent, t.text) for t in log.turns(e["episode_id"])],
                        [c["seed"] for c in log.calls(e["episode_id"])],
                    )
                    for e in log.episodes()
                ]
            )
    assert dumps[0] == dumps[1]
    assert len(dumps[0]) == 2


async def test_concurrent_episodes_each_get_their_own_script(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_scenario(
        grid={"client.style": ["plain", "upset", "verbose", "reserved"]},
        backend_options={"replies": {"client": ["One.", "Two.", "Three."]}},
    )
    result = await arun(path, db=tmp_path / "c.db", concurrency=4)
    assert result.complete == 4
    with RunLog(tmp_path / "c.db") as log:
        for e in log.episodes():
            texts = [t.text for t in log.turns(e["episode_id"]) if t.agent == "client"]
            assert texts == ["One.", "Two.", "Three."]


def test_rerun_into_the_same_database_keeps_one_clean_copy_of_each_episode(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_scenario(grid={"client.style": ["plain", "upset"]})
    db = tmp_path / "again.db"
    first = run(path, db=db)
    second = run(path, db=db)
    assert first.complete == 2 and second.failed == 0
    with RunLog(db) as log:
        episodes = log.episodes()
        assert len(episodes) == 2
        for e in episodes:
            assert e["status"] == "complete"
            turns = log.turns(e["episode_id"])
            assert [t.idx for t in turns] == list(range(6)) == list(range(e["n_turns"]))


@pytest.mark.usefixtures("fail_backend")
def test_rerun_redoes_a_failed_episode_from_scratch(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_scenario(grid={"client.style": ["plain", "upset"]})
    doomed = plan_episodes(load_scenario(path))[0].episode_id
    db = tmp_path / "resume.db"
    run(path, db=db, backend=f"unit-fail:{doomed}")
    run(path, db=db)
    with RunLog(db) as log:
        row = next(e for e in log.episodes() if e["episode_id"] == doomed)
        assert row["status"] == "complete" and not row["error"]
        turns = log.turns(doomed)
        assert [t.idx for t in turns] == list(range(6))
        assert {c["turn_idx"] for c in log.calls(doomed)} == {1, 2, 3, 4, 5}


# -- the runner refuses bad input before writing anything ------------------------------------


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("embeded", "did you mean 'embedded'"),
        ("embedded:/nope.gguf", "/nope.gguf"),
        ("scripted?bogus_option=1", "bogus_option"),
    ],
)
def test_bad_backend_spec_writes_nothing(
    write_scenario: Callable[..., Path], tmp_path: Path, backend: str, message: str
) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(UserError, match=message.replace("?", r"\?").replace(".", r"\.")):
        run(write_scenario(), db=db, backend=backend)
    assert not db.exists()


def test_bad_scenario_writes_nothing(write_scenario: Callable[..., Path], tmp_path: Path) -> None:
    data = base_scenario()
    data["graph"]["max_turn"] = 3
    db = tmp_path / "never.db"
    with pytest.raises(UserError, match="max_turns"):
        run(write_scenario(data), db=db)
    assert not db.exists()


def test_bad_grid_value_writes_nothing(write_scenario: Callable[..., Path], tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(UserError):
        run(write_scenario(grid={"client.style": ["angry"]}), db=db)
    assert not db.exists()


@pytest.mark.parametrize("kind", ["text", "sqlite", "newer"])
def test_database_that_is_not_ours_is_left_untouched(
    write_scenario: Callable[..., Path], tmp_path: Path, kind: str
) -> None:
    import sqlite3

    db = tmp_path / "precious.db"
    if kind == "text":
        db.write_text("not a database at all\n" * 20)
        expected = "not a personae run database"
    else:
        if kind == "sqlite":
            conn = sqlite3.connect(db)
            conn.execute("CREATE TABLE mine (x)")
            expected = "not a personae run database"
        else:
            run(write_scenario(), db=db)
            conn = sqlite3.connect(db)
            conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
            expected = "newer"
        conn.commit()
        conn.close()
    before = file_snapshot(db)
    runs_before = db_rows(db, "SELECT count(*) AS n FROM runs")[0]["n"] if kind == "newer" else None
    with pytest.raises(UserError, match=expected):
        run(write_scenario(), db=db)
    assert file_snapshot(db) == before
    if kind == "newer":
        assert db_rows(db, "SELECT count(*) AS n FROM runs")[0]["n"] == runs_before
