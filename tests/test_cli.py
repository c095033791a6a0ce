"""The `personae` command line: run, show, scenarios, and the exit-code-2 contract."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import base_scenario, file_snapshot
from typer.testing import CliRunner

from personae import RunLog
from personae.cli import app, main

PERSONAE = Path(sys.executable).parent / "personae"
runner = CliRunner()


# -- run ------------------------------------------------------------------------------------


def test_run_prints_database_and_summary(tmp_path: Path) -> None:
    db = tmp_path / "ok.db"
    result = runner.invoke(
        app, ["run", "counseling_cbt", "--backend", "scripted", "--episodes", "2", "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    assert f"database: {db}" in result.output
    summary = [line for line in result.output.splitlines() if line.startswith("2/2 episodes")]
    assert len(summary) == 1
    assert "24 turns" in summary[0] and "tok/s" in summary[0]
    with RunLog(db) as log:
        assert len(log.episodes()) == 2
        assert log.summary()["turns"] == 24


def test_entry_point_user_error_is_one_line_exit_2(tmp_path: Path) -> None:
    """The installed console script, as a user runs it: one line on stderr, exit code 2."""
    db = tmp_path / "never.db"
    proc = subprocess.run(
        [str(PERSONAE), "run", "counseling_cbt", "--backend", "embeded", "--db", str(db)],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "did you mean 'embedded'" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not db.exists()


# -- show and scenarios (in process) -------------------------------------------------------


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A database with 10 counseling_cbt episodes (scripted backend)."""
    from personae import run

    db = tmp_path_factory.mktemp("show") / "ten.db"
    run("counseling_cbt", backend="scripted", episodes=10, db=db)
    with RunLog(db) as log:
        return db, [e["episode_id"] for e in log.episodes()]


def test_show_lists_episode_ids(small_db: tuple[Path, list[str]]) -> None:
    db, ids = small_db
    result = runner.invoke(app, ["show", str(db)])
    assert result.exit_code == 0, result.output
    for episode_id in ids:
        assert episode_id in result.output
    assert "10 episodes (10 complete, 0 failed)" in result.output


def test_show_episode_prints_transcript_with_speakers(small_db: tuple[Path, list[str]]) -> None:
    db, ids = small_db
    result = runner.invoke(app, ["show", str(db), ids[3][:8]])  # a unique prefix is enough
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert ids[3] in lines[0]
    spoken = [line for line in lines if line.startswith(("counselor: ", "client: "))]
    assert len(spoken) == 12
    assert spoken[0] == "counselor: Hi, I'm Ana. What would you like to talk about today?"
    assert spoken[1] == "client: This is client, turn 1."
    assert "complete (max_turns), 12 turns" in result.output


def test_show_prints_bracketed_text_verbatim(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    # models often write stage directions; the transcript must show exactly what was logged
    from personae import run

    lines = ["I [sighs] don't know where to start.", "It's just [/] everything, you know?"]
    db = tmp_path / "brackets.db"
    run(write_scenario(backend_options={"replies": {"client": lines}}), db=db)
    with RunLog(db) as log:
        (episode,) = log.episodes()
        assert [t.text for t in log.turns(episode["episode_id"]) if t.agent == "client"][
            :2
        ] == lines
    result = runner.invoke(app, ["show", str(db), episode["episode_id"]])
    assert result.exit_code == 0, repr(result.exception)
    assert f"client: {lines[0]}" in result.output
    assert f"client: {lines[1]}" in result.output


def test_show_hidden_prints_hidden_state(small_db: tuple[Path, list[str]]) -> None:
    db, ids = small_db
    result = runner.invoke(app, ["show", str(db), ids[0], "--hidden"])
    assert result.exit_code == 0
    assert 'hidden: {"scripted_opening": true}' in result.output


def test_show_by_list_index_prints_that_row(small_db: tuple[Path, list[str]]) -> None:
    # `show DB` numbers its rows (#) and `show DB N` promises the N-th of them; hex episode ids
    # often start with a digit, which must not make `show DB N` pick another episode or fail
    db, ids = small_db
    shown: dict[int, str] = {}
    for i in range(len(ids)):
        result = runner.invoke(app, ["show", str(db), str(i)])
        shown[i] = (
            result.output.splitlines()[0] if result.exit_code == 0 else repr(result.exception)
        )
    wrong = {i: line for i, line in shown.items() if ids[i] not in line}
    assert not wrong, f"expected ids {ids}, got {wrong}"


def test_scenarios_lists_shipped_scenarios_and_roles() -> None:
    result = runner.invoke(app, ["scenarios"])
    assert result.exit_code == 0
    assert "counseling_cbt" in result.output
    roles = next(line for line in result.output.splitlines() if line.startswith("roles:"))
    assert "counselor" in roles and "client" in roles
    backends = next(line for line in result.output.splitlines() if line.startswith("backends:"))
    assert "scripted" in backends and "embedded" in backends


# -- the exit-code-2 contract for every kind of bad input (in process, via main) -------------


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def _bad_inputs(tmp: Path, write: Callable[..., Path]) -> dict[str, tuple[list[str], Path | None]]:
    notes = tmp / "notes.txt"
    notes.write_text("not a database\n")
    foreign = tmp / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    unknown_key = base_scenario()
    unknown_key["graph"]["max_turn"] = 3
    db = tmp / "out.db"
    run = ["run", "--db", str(db)]
    return {
        "missing scenario": ([*run, str(tmp / "absent.yaml"), "--backend", "scripted"], db),
        "unknown key": ([*run, str(write(unknown_key))], db),
        "malformed yaml": ([*run, str(write("name: x\ngraph:\n\tkind: dyadic\n"))], db),
        "unknown role": (
            [
                *run,
                str(
                    write(
                        agents={
                            "counselor": {"role": "therapist", "persona": "x.yaml"},
                            "client": {"role": "client", "persona": "y.yaml"},
                        }
                    )
                ),
            ],
            db,
        ),
        "missing persona": (
            [
                *run,
                str(
                    write(
                        agents={
                            "counselor": {"role": "counselor", "persona": "ghost.yaml"},
                            "client": {"role": "client", "persona": "ghost2.yaml"},
                        }
                    )
                ),
            ],
            db,
        ),
        "bad grid value": ([*run, str(write(grid={"client.style": ["angry"]}))], db),
        "unknown backend": ([*run, "counseling_cbt", "--backend", "embeded"], db),
        "missing gguf": ([*run, "counseling_cbt", "--backend", "embedded:/nope.gguf"], db),
        "text file as db": (
            ["run", "counseling_cbt", "--backend", "scripted", "--db", str(notes)],
            notes,
        ),
        "foreign sqlite db": (
            ["run", "counseling_cbt", "--backend", "scripted", "--db", str(foreign)],
            foreign,
        ),
        "show text file": (["show", str(notes)], notes),
        "show missing db": (["show", str(tmp / "absent.db")], None),
    }


CASES = [
    "missing scenario",
    "unknown key",
    "malformed yaml",
    "unknown role",
    "missing persona",
    "bad grid value",
    "unknown backend",
    "missing gguf",
    "text file as db",
    "foreign sqlite db",
    "show text file",
    "show missing db",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_error_line(
    case: str,
    tmp_path: Path,
    write_scenario: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, guarded = _bad_inputs(tmp_path, write_scenario)[case]
    before = file_snapshot(guarded) if guarded is not None else None
    code, out, err = _main(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err + out
    assert "database:" not in out  # no run happened
    if guarded is not None:
        assert file_snapshot(guarded) == before  # not created, or left byte-for-byte as it was


def test_show_unknown_episode_exits_2(
    small_db: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = small_db
    code, _, err = _main(["show", str(db), "zzzz-no-such-episode"], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "no such episode" in line
