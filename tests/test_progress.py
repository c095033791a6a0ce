"""Progress everywhere: a rich bar with an ETA on a terminal; with stderr not a terminal (a job's
log, `2> run.log`) one plain line every `PERSONAE_PROGRESS_EVERY` seconds and a final line —
for scenario runs, forks, judge passes and teaching experiments alike (one mechanism: the
runner's `RunProgress`)."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import base_scenario, cli
from rich.console import Console

from personae._progress import RunProgress, duration, progress_every

#: A plain progress line, e.g. `progress: 120/400 episodes (30%), 2,310 turns, 41.2 turns/s,
#: ETA 6m10s`.
LINE = re.compile(
    r"^progress: (\d+)/(\d+) episodes \((\d+)%(?:, \d+ failed)?\), ([\d,]+) (turns|judgments), "
    r"[\d.]+ \5/s, ETA (?:unknown|\d+s|\d+m\d\ds|\d+h\d\dm)"
)
FINAL = re.compile(
    r"^progress: (\d+)/(\d+) episodes \(100%(?:, \d+ failed)?\), ([\d,]+) (turns|judgments), "
    r"[\d.]+ \4/s, finished in \d+"
)


def _lines(err: str) -> tuple[list[str], list[str]]:
    lines = [line for line in err.splitlines() if line.startswith("progress:")]
    return [line for line in lines if LINE.match(line)], [
        line for line in lines if FINAL.match(line)
    ]


def test_plain_lines_every_n_seconds_and_a_final_line() -> None:
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False, width=200)
    with RunProgress(4, True, every=0.05, console=console) as bar:
        assert bar.plain
        for i in range(4):
            for _ in range(600):
                bar.turn(3)
            time.sleep(0.12)
            bar.episode_done(failed=i == 3)
    periodic, final = _lines(sink.getvalue())
    assert len(periodic) >= 4, sink.getvalue()
    assert "2,400 turns" in final[0] and "4/4 episodes (100%, 1 failed)" in final[0]
    assert len(final) == 1 and sink.getvalue().rstrip().endswith(final[0])
    assert periodic[0].endswith("ETA unknown")  # nothing finished yet: no estimate
    later = [line for line in periodic if "ETA unknown" not in line]
    assert later and all(LINE.match(line) for line in later)
    counts = [int(LINE.match(line).group(1)) for line in periodic]  # type: ignore[union-attr]
    assert counts == sorted(counts)


def test_no_lines_when_disabled_or_on_a_terminal() -> None:
    quiet, terminal = io.StringIO(), io.StringIO()
    with RunProgress(2, False, every=0.01, console=Console(file=quiet)) as bar:
        time.sleep(0.05)
        bar.episode_done(False)
    assert quiet.getvalue() == ""
    console = Console(file=terminal, force_terminal=True, width=160)
    with RunProgress(2, True, every=0.01, console=console) as bar:
        assert not bar.plain
        bar.turn(5)
        bar.episode_done(False)
        time.sleep(0.05)
    shown = terminal.getvalue()
    assert "progress:" not in shown and "1/2 episodes" in shown and "ETA" in shown


def test_warnings_are_shown_once_per_key() -> None:
    sink = io.StringIO()
    with RunProgress(1, False, console=Console(file=sink)) as bar:
        for _ in range(3):
            bar.warn("a", "first")
        bar.warn("b", "second")
    assert sink.getvalue().splitlines() == ["warning: first", "warning: second"]


def test_durations_read_like_a_clock() -> None:
    assert [duration(s) for s in (0.2, 45, 370, 7500)] == ["0s", "45s", "6m10s", "2h05m"]


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONAE_PROGRESS_EVERY", raising=False)
    assert progress_every() == 30.0
    monkeypatch.setenv("PERSONAE_PROGRESS_EVERY", "5")
    assert progress_every() == 5.0


# -- every kind of run, through the command line (stderr is not a terminal here) -------------


@pytest.fixture
def slow_scenario(write_scenario: Callable[..., Path]) -> Path:
    """Six 4-turn episodes, two at a time, 20 ms a call: about 0.3 s in all."""
    data = base_scenario(repeats=6, backend="scripted", backend_options={"latency_s": 0.02})
    data["graph"]["max_turns"] = 4
    return write_scenario(data)


def test_a_run_logged_to_a_file_prints_progress_lines(
    slow_scenario: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PERSONAE_PROGRESS_EVERY", "0.05")
    db = tmp_path / "run.db"
    code, out, err = cli(["run", str(slow_scenario), "--db", str(db), "--concurrency", "2"], capsys)
    assert code == 0, err
    periodic, final = _lines(err)
    assert len(periodic) >= 2, err
    assert final == [line for line in err.splitlines() if line.startswith("progress:")][-1:]
    assert final[0].startswith("progress: 6/6 episodes (100%), 24 turns")
    assert "━" not in err  # no bar drawn into the log
    assert "6/6 episodes, 24 turns" in out  # the summary still goes to stdout


def test_quiet_prints_no_progress(
    slow_scenario: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PERSONAE_PROGRESS_EVERY", "0.05")
    code, _, err = cli(["run", str(slow_scenario), "--db", str(tmp_path / "q.db"), "-q"], capsys)
    assert code == 0 and "progress:" not in err


def test_a_bad_interval_is_one_line_and_writes_nothing(
    slow_scenario: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PERSONAE_PROGRESS_EVERY", "soon")
    db = tmp_path / "never.db"
    code, _, err = cli(["run", str(slow_scenario), "--db", str(db)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "PERSONAE_PROGRESS_EVERY must be a positive number of seconds" in err
    assert not db.exists()


def test_forks_and_judge_passes_report_progress_the_same_way(
    slow_scenario: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = tmp_path / "run.db"
    assert cli(["run", str(slow_scenario), "--db", str(db), "-q"], capsys)[0] == 0
    monkeypatch.setenv("PERSONAE_PROGRESS_EVERY", "0.05")
    code, _, err = cli(["replay", str(db), "0", "--fork-at", "2"], capsys)
    assert code == 0, err
    _, final = _lines(err)
    assert final and final[0].startswith("progress: 1/1 episodes (100%), 4 turns")
    judge = tmp_path / "judge.yaml"
    judge.write_text(yaml.safe_dump({
        "name": "rater",
        "backend": "scripted?latency_s=0.1",
        "judge": {"role": "judge", "observes": ["counselor"],
                  "persona": {"rubric": {"id": "r", "dimensions": [{"name": "care"}]}}},
    }), encoding="utf-8")  # fmt: skip
    code, _, err = cli(["judge", str(db), str(judge)], capsys)
    assert code == 0, err
    periodic, final = _lines(err)
    assert final and final[0].startswith("progress: 7/7 episodes (100%), 14 judgments")
    assert periodic and "judgments/s" in periodic[0]
    code, _, err = cli(["judge", str(db), str(judge), "-q"], capsys)
    assert code == 0 and "progress:" not in err


def test_a_teaching_experiment_reports_its_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONAE_PROGRESS_EVERY", "0.05")
    argv = ["experiment", "teaching", "teaching_budget", "--backend", "simulated?latency_s=0.01",
            "--items", "4", "--seeds", "0", "--db", str(tmp_path / "t.db")]  # fmt: skip
    code, _, err = cli(argv, capsys)
    assert code == 0, err
    _, final = _lines(err)
    assert final, err
    done, total, steps = (int(x.replace(",", "")) for x in FINAL.match(final[0]).groups()[:3])  # type: ignore[union-attr]
    assert done == total > 0 and steps > total  # every stage's episodes, and their steps
