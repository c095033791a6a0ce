"""`personae show` on narrow terminals: transcripts wrap at word boundaries with the text
hanging beside the speaker, so no speaker name (or any word) is split across lines; the episode
list never splits its one-word columns. Printed to a file or pipe (no terminal, no $COLUMNS),
a turn stays one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import personae
from personae.cli import app

LONG = (
    "Well, I think the seller_advisor and the buyer_advisor should both reconsider their "
    "extraordinarily unreasonable positions before anybody walks away from this table."
)
NAMES = ("buyer_advisor", "buyer", "seller_advisor", "seller")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One negotiation (four agents, private advisors) whose every line is `LONG`."""
    path = tmp_path_factory.mktemp("narrow") / "n.db"
    personae.run(
        "negotiation_advisors",
        db=path,
        episodes=1,
        settings=["backend=scripted", f"backend_options.replies=[{LONG!r}]"],
    )
    return path


def _words(text: str) -> set[str]:
    return set(re.findall(r"\S+", text))


@pytest.mark.parametrize("width", [80, 60])
def test_a_transcript_wraps_at_words_and_keeps_speaker_names_whole(db: Path, width: int) -> None:
    result = CliRunner().invoke(app, ["show", str(db), "0"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    body = [line for line in lines[1:-1] if line.strip()]
    # every word printed is a word of the transcript: nothing was cut in two
    allowed = _words(LONG) | {f"{n}:" for n in NAMES} | _words("(privately, to buyer): seller):")
    assert _words("\n".join(body)) <= allowed, _words("\n".join(body)) - allowed
    starts = [line.split(":")[0].split(" (")[0] for line in body if not line.startswith(" ")]
    assert starts == list(NAMES) * 3  # 12 turns, each starting with its speaker's whole name
    wrapped = [line for line in body if line.startswith(" ")]
    assert wrapped and all(line.strip() for line in wrapped)  # continuation lines are indented
    assert not any(line != line.rstrip() for line in lines)  # no trailing padding


def test_without_a_terminal_each_turn_is_one_line(db: Path) -> None:
    result = CliRunner().invoke(app, ["show", str(db), "0"], env={"COLUMNS": ""})
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if LONG in line]
    assert len(lines) == 12 and lines[0] == f"buyer_advisor (privately, to buyer): {LONG}"


@pytest.mark.parametrize("width", [80, 60])
def test_the_episode_list_does_not_split_its_words(db: Path, width: int) -> None:
    result = CliRunner().invoke(app, ["show", str(db)], env={"COLUMNS": str(width)})
    assert result.exit_code == 0
    for word in ("status", "complete", "max_turns", "turns"):
        assert re.search(rf"\b{word}\b", result.output), (word, result.output)
