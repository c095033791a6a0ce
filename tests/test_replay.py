"""Replay: exact re-execution (scripted and embedded), prompt changes caught at the right turn,
forks that record their parent and share the prefix, the stepper, and bad input (exit 2)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SCENARIOS, db_rows
from typer.testing import CliRunner

import personae
from personae import RunLog
from personae.agents import STYLE_BEHAVIOUR, Client, ConversationStyle, Counselor, Utterance
from personae.backends import ScriptedBackend, register_backend
from personae.cli import app, main
from personae.replay import fork_episode, verify_episode, verify_run

PERSONAE = Path(sys.executable).parent / "personae"
WriteScenario = Callable[..., Path]


@register_backend("tests-fork")
def _fork_backend(target: str | None, options: dict[str, Any]) -> ScriptedBackend:
    """Replies that say which backend produced them, so a fork's own turns are recognisable."""
    return ScriptedBackend(lambda r: f"Forked {r.tags['agent']} at turn {r.tags['turn']}.")


def _run(write: WriteScenario, tmp_path: Path, name: str = "run.db", **overrides: Any) -> Path:
    db = tmp_path / name
    result = personae.run(write(**overrides), db=db)
    assert result.failed == 0
    return db


def _episode_ids(db: Path) -> list[str]:
    with RunLog(db) as log:
        return [e["episode_id"] for e in log.episodes()]


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; assert exit code 2 and one error line; return it."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


# -- exact re-execution ----------------------------------------------------------------------


def test_scripted_run_reexecutes_identically(write_scenario: WriteScenario, tmp_path: Path) -> None:
    db = _run(write_scenario, tmp_path, grid={"client.style": ["plain", "upset", "verbose"]})
    results = verify_run(db)
    assert len(results) == 3
    assert all(r.identical for r in results), [r.line() for r in results]
    assert results[0].line().endswith("identical (6 turns)")

    out = CliRunner().invoke(app, ["replay", str(db), "--verify"])
    assert out.exit_code == 0, out.output
    assert out.stdout.count("identical ") == 3
    assert "3/3 episodes identical" in out.stdout
    (run_id,) = [r["run_id"] for r in db_rows(db, "SELECT run_id FROM runs")]
    one_run = CliRunner().invoke(app, ["replay", str(db), "--verify", "--run", run_id])
    assert one_run.exit_code == 0 and "3/3 episodes identical" in one_run.stdout


def test_chat_rendered_episode_reexecutes_identically(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path, render="chat")
    (episode,) = _episode_ids(db)
    assert (
        db_rows(db, "SELECT count(*) AS n FROM llm_calls WHERE messages_json IS NULL")[0]["n"] == 0
    )
    assert verify_episode(db, episode).identical


def test_retry_after_an_empty_output_is_replayed(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    replies = {"client": ["", "I'm not sure where to start.", "It has been hard."]}
    db = _run(write_scenario, tmp_path, backend_options={"replies": replies})
    (episode,) = _episode_ids(db)
    ids = [r["call_id"] for r in db_rows(db, "SELECT call_id FROM llm_calls ORDER BY call_id")]
    assert f"{episode}-0001-r1" in ids  # the empty first output was retried
    assert verify_episode(db, episode).identical


def test_changed_prompt_template_is_caught_at_the_right_turn(
    write_scenario: WriteScenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _run(write_scenario, tmp_path)
    (episode,) = _episode_ids(db)
    original = Client.render_transcript

    def changed(self: Client, history: Sequence[Utterance]) -> str:
        text = original(self, history)
        # a template edit that only shows once three lines have been said (the client's turn 3)
        return text.replace("Client:", "Client (v2):") if len(history) >= 3 else text

    monkeypatch.setattr(Client, "render_transcript", changed)
    result = verify_episode(db, episode)
    assert not result.identical
    assert result.first_diff is not None
    assert result.first_diff.turn == 3
    assert "rendered prompt" in result.first_diff.what
    assert "+Client (v2):" in result.first_diff.diff
    assert "-Client:" in result.first_diff.diff

    out = CliRunner().invoke(app, ["replay", str(db), episode[:6], "--verify"])
    assert out.exit_code == 1
    assert f"differs {episode} at turn 3" in out.stdout
    assert "+Client (v2):" in out.stdout


def test_changed_system_prompt_in_chat_mode_is_caught_at_the_counselors_first_call(
    write_scenario: WriteScenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _run(write_scenario, tmp_path, render="chat")
    (episode,) = _episode_ids(db)
    original = Counselor.system_prompt
    monkeypatch.setattr(Counselor, "system_prompt", lambda self: original(self) + " Be brief.")
    result = verify_episode(db, episode)
    # turn 0 is the counselor's fixed opening line (no prompt); its first call is turn 2
    assert result.first_diff is not None and result.first_diff.turn == 2
    assert "Be brief." in result.first_diff.diff


def test_unrecorded_call_is_a_mismatch_not_a_crash(
    write_scenario: WriteScenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = {"counselor": ["What brings you here?", "Goodbye, see you next week."]}
    db = _run(write_scenario, tmp_path, backend_options={"replies": replies})
    (episode,) = _episode_ids(db)
    row = db_rows(db, "SELECT end_reason, n_turns FROM episodes")[0]
    assert (row["end_reason"], row["n_turns"]) == ("farewell", 5)

    monkeypatch.setattr(Counselor, "is_farewell", lambda self, text: False)
    result = verify_episode(db, episode)
    assert result.first_diff is not None
    assert result.first_diff.turn == 5
    assert "went on to turn 5" in result.first_diff.what


def test_changed_output_cleaning_is_reported_as_a_text_difference(
    write_scenario: WriteScenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _run(write_scenario, tmp_path)
    (episode,) = _episode_ids(db)
    original = Client.clean
    monkeypatch.setattr(
        Client, "clean", lambda self, raw, truncated=False: original(self, raw).upper()
    )
    result = verify_episode(db, episode)
    assert result.first_diff is not None
    assert result.first_diff.turn == 1
    assert "utterance differs" in result.first_diff.what
    assert "+THIS IS CLIENT, TURN 1." in result.first_diff.diff


def test_replay_backend_serves_a_whole_run_again(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    replies = {"client": ["One.", "Two.", "Three."], "counselor": ["Why?", "How?"]}
    scenario = write_scenario(backend_options={"replies": replies})
    first = tmp_path / "first.db"
    personae.run(scenario, db=first)
    second = tmp_path / "second.db"
    personae.run(scenario, db=second, backend=f"replay:{first}")
    query = "SELECT episode_id, idx, agent, text FROM turns ORDER BY episode_id, idx"
    assert db_rows(first, query) == db_rows(second, query)
    assert {r["backend"] for r in db_rows(second, "SELECT backend FROM llm_calls")} == {"replay"}


# -- forks -----------------------------------------------------------------------------------


def test_fork_records_its_parent_and_shares_the_prefix(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path)
    (parent,) = _episode_ids(db)
    fork = fork_episode(db, parent, 3, backend="tests-fork", settings=["client.style=upset"])
    assert (fork.status, fork.n_turns, fork.fork_turn) == ("complete", 6, 3)
    assert fork.episode_id != parent

    with RunLog(db) as log:
        row = log.episode(fork.episode_id)
        assert row["parent_episode_id"] == parent
        assert row["fork_turn"] == 3
        assert row["condition"]["client"]["style"] == "upset"
        assert row["personas"]["client"]["style"] == "upset"
        parent_turns, fork_turns = log.turns(parent), log.turns(fork.episode_id)
        fork_calls = log.calls(fork.episode_id)
        parent_calls = log.calls(parent)
    assert [(t.agent, t.text) for t in fork_turns[:3]] == [
        (t.agent, t.text) for t in parent_turns[:3]
    ]
    assert [t.text for t in fork_turns[3:]] == [
        "Forked client at turn 3.",
        "Forked counselor at turn 4.",
        "Forked client at turn 5.",
    ]
    # the prefix's model calls are copied under the fork's id, prompts unchanged
    copied = [c for c in fork_calls if c["turn_idx"] < 3]
    assert [c["call_id"] for c in copied] == [f"{fork.episode_id}-0001", f"{fork.episode_id}-0002"]
    assert [c["prompt"] for c in copied] == [c["prompt"] for c in parent_calls if c["turn_idx"] < 3]
    assert fork_turns[1].call_id == f"{fork.episode_id}-0001"
    # from turn 3 on the client speaks with the new persona setting
    turn3 = next(c for c in fork_calls if c["turn_idx"] == 3)
    assert STYLE_BEHAVIOUR[ConversationStyle.upset] in turn3["prompt"]
    assert STYLE_BEHAVIOUR[ConversationStyle.upset] not in parent_calls[0]["prompt"]
    # the parent is untouched, and the fork itself re-executes exactly
    assert verify_episode(db, parent).identical
    assert verify_episode(db, fork.episode_id).identical


def test_fork_id_is_stable_and_refork_reuses_the_complete_fork(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path)
    (parent,) = _episode_ids(db)
    settings = ["counselor.sampling.temperature=0.2"]
    first = fork_episode(db, parent, 2, settings=settings)
    again = fork_episode(db, parent, 2, settings=settings)
    other = fork_episode(db, parent, 2, settings=["counselor.sampling.temperature=0.3"])
    assert again.existed and again.episode_id == first.episode_id
    assert other.episode_id != first.episode_id
    n = db_rows(db, "SELECT count(*) AS n FROM turns WHERE episode_id = ?", first.episode_id)
    assert n[0]["n"] == 6
    call = db_rows(
        db,
        "SELECT params_json FROM llm_calls WHERE episode_id = ? AND turn_idx = 2",
        first.episode_id,
    )[0]
    assert json.loads(call["params_json"])["temperature"] == 0.2
    spec = db_rows(
        db,
        "SELECT r.spec_json FROM runs r JOIN episodes e USING (run_id) WHERE e.episode_id = ?",
        first.episode_id,
    )[0]["spec_json"]
    assert json.loads(spec)["agents"]["counselor"]["sampling"]["temperature"] == 0.2


def test_forks_of_one_parent_compare_side_by_side(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path)
    (parent,) = _episode_ids(db)
    a = fork_episode(db, parent, 3, backend="tests-fork")
    b = fork_episode(db, parent, 3, settings=["client.style=reserved"])
    out = CliRunner().invoke(
        app, ["show", str(db), "--compare", a.episode_id, b.episode_id], env={"COLUMNS": "240"}
    )
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert a.episode_id in text and b.episode_id in text
    assert f"fork of {parent} at turn 3" in text
    assert "Forked client at turn 3." in text
    assert "This is client, turn 3." in text
    assert "3 shared turns" in text


def test_fork_from_the_command_line(write_scenario: WriteScenario, tmp_path: Path) -> None:
    db = _run(write_scenario, tmp_path)
    (parent,) = _episode_ids(db)
    out = CliRunner().invoke(
        app,
        ["replay", str(db), "0", "--fork-at", "4", "--backend", "tests-fork",
         "--set", "counselor.sampling.max_tokens=50"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f"of {parent} at turn 4: complete, 6 turns" in out.stdout
    assert f"--compare {parent} " in out.stdout


# -- the stepper -----------------------------------------------------------------------------


def test_print_mode_shows_prompt_sampling_tokens_and_hidden_state(
    write_scenario: WriteScenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Client, "hidden_state", lambda self: {"tom_note": "thinks Ana is kind"})
    db = _run(write_scenario, tmp_path)
    out = CliRunner().invoke(app, ["replay", str(db), "0", "--print"], env={"COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    text = out.stdout
    for i in range(6):
        assert f"turn {i}/5" in text
    assert "This is client, turn 3." in text
    assert "Transcript of a counseling session." in text  # the rendered prompt
    assert "Private notes on the client" in text
    assert "temperature=0.8" in text and "seed" in text and "prompt 3" in text
    assert "HIDDEN" in text and "thinks Ana is kind" in text
    assert "fixed line" in text  # the counselor's opening had no model call
    seeds = [r["seed"] for r in db_rows(tmp_path / "run.db", "SELECT seed FROM llm_calls")]
    assert str(seeds[0]) in text

    one = CliRunner().invoke(app, ["replay", str(db), "0", "--print", "--turn", "2"])
    assert "turn 2/5" in one.stdout and "turn 3/5" not in one.stdout


def test_interactive_stepper_moves_forward_back_and_jumps(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path)
    out = CliRunner().invoke(
        app, ["replay", str(db), "0"], input="n\nj 4\np\nj 9\nx\nq\n", env={"COLUMNS": "160"}
    )
    assert out.exit_code == 0, out.output
    text = out.stdout
    order = [text.index(f"turn {i}/5") for i in (0, 1, 4, 3)]
    assert order == sorted(order)
    assert "turn 2/5" not in text and "turn 5/5" not in text
    assert "no turn '9'" in text
    assert "keys: n" in text


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(
    write_scenario: WriteScenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _run(write_scenario, tmp_path)
    (episode,) = _episode_ids(db)
    cases = {
        "no such episode": ["replay", str(db), "feedbeef", "--print"],
        "fork turn 6 is out of range": ["replay", str(db), episode, "--fork-at", "6"],
        "unknown persona field 'styl'": [
            "replay", str(db), episode, "--fork-at", "2", "--set", "client.styl=upset"
        ],
        "bad value": ["replay", str(db), episode, "--fork-at", "2", "--set", "client.style=angry"],
        "unknown agent 'patient'": [
            "replay", str(db), episode, "--fork-at", "2", "--set", "patient.style=upset"
        ],
        "unknown sampling field 'temp'": [
            "replay", str(db), episode, "--fork-at", "2", "--set", "client.sampling.temp=1"
        ],
        "unknown backend 'embeded'": [
            "replay", str(db), episode, "--fork-at", "2", "--backend", "embeded"
        ],
        "only apply to a fork": ["replay", str(db), episode, "--set", "client.style=upset"],
        "no episode given": ["replay", str(db)],
        "turn 7 is out of range": ["replay", str(db), episode, "--print", "--turn", "7"],
        "database file not found": ["replay", str(tmp_path / "missing.db"), "--verify"],
        "no such run: 'nope'": ["replay", str(db), "--verify", "--run", "nope"],
        "--fork-at and --verify": ["replay", str(db), episode, "--fork-at", "1", "--verify"],
        "no such episode: 'feedbeef'": ["show", str(db), "--compare", episode, "feedbeef"],
    }  # fmt: skip
    for expected, argv in cases.items():
        assert expected in _cli_error(argv, capsys), argv
    # nothing was written by the refused forks
    assert len(_episode_ids(db)) == 1


def test_database_from_a_newer_schema_is_refused(
    write_scenario: WriteScenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _run(write_scenario, tmp_path)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    for argv in (["replay", str(db), "0", "--print"], ["replay", str(db), "--verify"]):
        assert "newer than this personae supports" in _cli_error(argv, capsys)


def test_the_installed_command_exits_2_on_an_unknown_episode(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = _run(write_scenario, tmp_path)
    proc = subprocess.run(
        [str(PERSONAE), "replay", str(db), "nosuchepisode", "--verify"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {db}: no such episode: 'nosuchepisode' — list episode ids with "
        f"'personae show {db}'"
    ]


# -- the real model --------------------------------------------------------------------------


@pytest.mark.model
def test_embedded_model_episode_reexecutes_identically(tmp_path: Path) -> None:
    spec = yaml.safe_load((SCENARIOS / "counseling_cbt.yaml").read_text())
    spec["graph"]["max_turns"] = 4
    for agent in spec["agents"].values():
        agent["persona"] = str(SCENARIOS / agent["persona"])
        agent["sampling"]["max_tokens"] = 32
    spec.pop("grid")
    scenario = tmp_path / "short.yaml"
    scenario.write_text(yaml.safe_dump(spec))
    db = tmp_path / "embedded.db"
    result = personae.run(
        scenario, db=db, backend="embedded?n_parallel=2&ctx_per_slot=2048", episodes=1
    )
    assert result.complete == 1
    (episode,) = _episode_ids(db)
    assert {r["backend"] for r in db_rows(db, "SELECT backend FROM llm_calls")} != {"replay"}
    verdict = verify_episode(db, episode)
    assert verdict.identical, verdict.line()
    assert verdict.turns >= 2
