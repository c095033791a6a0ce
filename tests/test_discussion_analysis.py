"""The discussion-study analysis recovers what a synthetic database plants (see discussion_db):
per-strategy means, intervention rates, participation, diversity, the regression's strategy
effect and turn slope, annotator agreement; and `personae analyze discussion` writes its files
and refuses bad input with one line and exit code 2, writing nothing."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli, file_snapshot
from discussion_db import (
    PLANTED,
    Discussion,
    Line,
    planted_discussions,
    reference_lines,
    write_discussions,
)
from PIL import Image

from personae import UserError
from personae.analysis import (
    DiscussionAnalysis,
    analyze_discussion,
    diversity,
    gini,
    jensen_shannon,
    load_reference,
)
from personae.analysis._discussion import NO_REFERENCE, RATING_COLUMNS

RESAMPLES = 200


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The planted database and a reference drawn from the same distribution of diversity."""
    folder = tmp_path_factory.mktemp("planted")
    db = write_discussions(folder / "planted.db", planted_discussions())
    reference = folder / "same.jsonl"
    reference.write_text("\n".join(reference_lines(random.Random(7), 20)) + "\n", "utf-8")
    return db, reference


@pytest.fixture(scope="module")
def analysis(planted: tuple[Path, Path]) -> DiscussionAnalysis:
    db, reference = planted
    return analyze_discussion(db, reference=reference, n_resamples=RESAMPLES)


def _row(frame: pd.DataFrame, **where: object) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for column, value in where.items():
        mask &= frame[column] == value
    assert mask.sum() == 1, where
    return frame[mask].iloc[0]


def test_per_strategy_means_rates_and_counts_are_the_planted_ones(
    analysis: DiscussionAnalysis,
) -> None:
    table = analysis.strategies
    assert list(table["strategy"]) == ["none", "rules_only", "moderation_game"]
    for strategy, (toxicity, quality, rate) in PLANTED.items():
        row = _row(table, strategy=strategy)
        assert row["discussions"] == 6 and row["comments"] == 72  # seeds are not comments
        assert row["toxicity"] == pytest.approx(toxicity)
        assert row["toxicity_low"] < toxicity < row["toxicity_high"]  # discussions vary
        assert row["argument_quality"] == pytest.approx(quality)
        assert row["baseline_toxicity"] == pytest.approx((toxicity - 1) / 4)
        if math.isnan(rate):
            assert math.isnan(row["intervention_rate"])
        else:
            assert row["intervention_rate"] == pytest.approx(rate)
    assert list(table["invalid_ratings"]) == [4, 0, 0]
    assert list(table["ratings"]) == [72 * 3 - 4, 72 * 3, 72 * 3]
    assert any("4 invalid annotator rating" in n for n in analysis.notes)
    assert any(n.startswith("none: the facilitator had no turn") for n in analysis.notes)


def test_participation_gini_and_trolls(analysis: DiscussionAnalysis) -> None:
    p = analysis.participation
    # comment counts per participant: none 3,3,3,3; rules_only 3,3,2,2; moderation_game 3,2,2,2
    assert list(p["comments_per_participant"]) == pytest.approx([3.0, 2.5, 2.25])
    assert list(p["gini"]) == pytest.approx([0.0, 0.1, 1 / 12])
    assert len(analysis.participants) == 18 * 4
    troll = _row(analysis.intents, strategy="rules_only", intent="troll")
    assert troll["participants"] == 6 and troll["comments"] == 18
    assert set(analysis.intents["intent"]) == {"troll", "neutral", "community"}
    for row in analysis.trolls.itertuples():
        assert row.troll_comments == 18
        assert row.difference > 0.4  # planted +1, diluted by the random annotator


def test_the_regression_recovers_the_strategy_effects_and_the_turn_slope(
    analysis: DiscussionAnalysis,
) -> None:
    coef = analysis.regression.set_index("label")
    assert coef.loc["rules_only minus none", "coef"] == pytest.approx(-1.0, abs=0.15)
    assert coef.loc["moderation_game minus none", "coef"] == pytest.approx(-0.5, abs=0.15)
    slope = coef.loc["turn slope: moderation_game minus none"]
    assert -0.15 < slope["coef"] < -0.04 and slope["p_value"] < 0.01
    assert coef.loc["turn slope: rules_only minus none", "p_value"] > 0.01
    # planted discussion offsets +1, -1, +1, -1, 0, 0: a variance of about 2/3
    assert 0.3 < coef.loc["variance of the discussion intercepts", "coef"] < 1.5
    assert "Mixed Linear Model" in analysis.regression_summary
    assert not [n for n in analysis.notes if n.startswith("regression")]


def test_agreement_is_perfect_between_the_two_agreeing_annotators(
    analysis: DiscussionAnalysis,
) -> None:
    a = analysis.agreement
    for dim in ("toxicity", "argument_quality"):
        assert _row(a, dimension=dim, annotators="annotator_1 + annotator_2")["alpha"] == 1.0
        random_pair = _row(a, dimension=dim, annotators="annotator_1 + annotator_3")["alpha"]
        everyone = _row(a, dimension=dim, annotators="all")["alpha"]
        assert random_pair < 0.95 and random_pair < everyone < 1.0


def test_the_ratings_table_has_one_row_per_comment_and_annotator(
    analysis: DiscussionAnalysis,
) -> None:
    r = analysis.ratings
    assert list(r.columns) == list(RATING_COLUMNS)
    assert len(r) == 18 * 12 * 3 and int(r["valid"].sum()) == 18 * 12 * 3 - 4
    assert r.loc[r["valid"] == 0, "toxicity"].isna().all()
    troll = r[r["agent"] == "participant_1"]
    assert troll["is_troll"].all() and set(troll["intent"]) == {"troll"}
    assert set(troll["username"]) == {"user1"}
    facilitator = r[r["role"] == "facilitator"]
    assert len(facilitator) == 6 * (2 + 3) * 3 and facilitator["intent"].isna().all()
    one = _row(r, episode_id="run-1-ep006-rules_only", turn=2, annotator="annotator_3")
    assert one["annotator_age"] == 27 and one["annotator_political_leaning"] == "left"
    assert (r["baseline_toxicity"] == (r.groupby(["episode_id", "turn"])["toxicity"]
            .transform("first") - 1) / 4).all()  # fmt: skip


def test_diversity_of_identical_and_disjoint_comments() -> None:
    assert diversity(["we should ban cars", "We should ban cars!", "we should ban cars"]) == 0
    assert diversity(["rent control works", "nuclear power plants", "phones in schools"]) == 1
    assert math.isnan(diversity(["only one comment"]))


def test_gini_on_hand_computed_counts() -> None:
    # counts 3, 1, 0, 0: mean 1; ordered pairs' absolute differences sum to 20 -> 20 / (2*16*1)
    assert gini([3, 1, 0, 0]) == pytest.approx(0.625)
    assert gini([2, 2, 2]) == 0 and math.isnan(gini([0, 0]))


def test_jsd_is_small_for_the_same_distribution_and_large_for_another(
    analysis: DiscussionAnalysis, tmp_path: Path
) -> None:
    same = _row(analysis.diversity, strategy="all discussions")["jsd"]
    assert 0 <= same < 0.1
    repetitive = tmp_path / "repetitive.jsonl"
    repetitive.write_text("\n".join(reference_lines(random.Random(3), 40, 2, 4)), "utf-8")
    human = [diversity(c.comments) for c in load_reference(repetitive)]
    assert jensen_shannon(list(analysis.discussions["diversity"]), human) > 0.8
    assert len(analysis.reference) == 20 and analysis.reference["diversity"].between(0, 1).all()


def _hand_made(path: Path) -> Path:
    """Two discussions of one strategy: identical comments, then disjoint ones; participant
    counts 3, 1, 0, 0 in the first (participant_4 never speaks)."""
    same = "we should ban cars in the centre"
    first = Discussion(
        "rules_only",
        {f"participant_{i}": "neutral" for i in range(1, 5)},
        [Line(a, same, ratings={"annotator_1": (2, 3), "annotator_2": (2, 3)}) for a in
         ("participant_1", "participant_1", "participant_2", "participant_1", "facilitator")],
    )  # fmt: skip
    words = ["rent control works", "nuclear power plants", "phones in schools", "remote jobs"]
    second = Discussion(
        "rules_only",
        {"participant_1": "troll", "participant_2": "neutral"},
        [Line(f"participant_{1 + i % 2}", w, ratings={"annotator_1": (4, 1)})
         for i, w in enumerate(words)],
    )  # fmt: skip
    return write_discussions(path, [first, second])


def test_hand_made_discussions_and_the_degenerate_cases(tmp_path: Path) -> None:
    result = analyze_discussion(_hand_made(tmp_path / "hand.db"), n_resamples=RESAMPLES)
    d = result.discussions
    assert list(d["diversity"]) == [0.0, 1.0]
    assert d["gini"].iloc[0] == pytest.approx(0.625)
    assert list(d["participants"]) == [4, 2]
    assert result.regression.empty and result.regression_summary == ""
    assert any("regression: 2 discussion(s)" in n and "not fitted" in n for n in result.notes)
    assert set(result.diversity["jsd"]) == {NO_REFERENCE}
    assert result.reference.empty
    alone = _row(result.agreement, dimension="toxicity", annotators="all")
    assert math.isnan(alone["alpha"])  # one value only: undefined, and said so
    assert any(n.startswith("agreement on toxicity: undefined (5 comments") for n in result.notes)


def test_one_strategy_fits_the_turn_slope_only(tmp_path: Path) -> None:
    db = write_discussions(tmp_path / "one.db", planted_discussions(("moderation_game",), 4))
    result = analyze_discussion(db, n_resamples=RESAMPLES)
    assert list(result.regression["term"][:2]) == ["Intercept", "turn_c"]
    assert result.regression.set_index("term").loc["turn_c", "coef"] < 0
    assert any("one strategy only (moderation_game)" in n for n in result.notes)


def test_a_database_without_discussions_is_refused(tmp_path: Path) -> None:
    counseling = Discussion(
        "none", {}, [Line("counselor", "How are you?"), Line("client", "Fine.")], False
    )
    db = write_discussions(tmp_path / "cbt.db", [counseling])
    with pytest.raises(UserError, match="no discussion episodes") as info:
        analyze_discussion(db)
    assert str(db) in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"id": "a", "comments": ["x", "y"]}\n\n{"id": "b", "comments": ["x"\n', ":3: malformed"),
        ('{"id": "a", "comments": ["x", "y"]}\n["x", "y"]\n', ":2: a JSONL line must be"),
        ('{"id": "a", "comments": ["x", "y"]}\n{"id": "b", "comments": "x y"}\n', ":2: 'comm"),
        ('{"id": "a", "comments": ["x", "y"]}\n{"id": "b", "text": ["x"]}\n', ":2: no 'comm"),
        ('{"id": "a", "comments": ["x", "y"]}\n{"id": "a", "comments": ["z", "w"]}\n', ":2: dup"),
        ('{"id": "a", "comments": ["x", "y"]}\n', "1 conversation with two or more"),
    ],
)
def test_a_malformed_reference_names_its_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "ref.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_reference(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_a_reference_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"comments": ["a", "b"]}\n{"comments": ["caf\xe9", "b"]}\n')
    with pytest.raises(UserError, match=r"latin.jsonl:2: not UTF-8 text \(byte 0xE9"):
        load_reference(path)


def test_cli_writes_every_file_next_to_the_database(
    planted: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, reference = planted
    argv = ["analyze", "discussion", str(db), "--reference", str(reference)]
    code, stdout, stderr = cli([*argv, "--n-resamples", str(RESAMPLES)], capsys)
    assert code == 0, stderr
    folder = db.with_name("planted_analysis")  # the default: <DB stem>_analysis/
    assert "per strategy" in stdout and "rules_only" in stdout
    assert f"wrote 21 files to {folder}" in stdout
    assert "note: 4 invalid annotator rating(s)" in stdout
    assert "18 discussions, 216 comments" in stderr
    for name in ("strategies", "diversity", "regression", "agreement", "ratings", "reference"):
        assert (folder / f"{name}.csv").stat().st_size > 0
    ratings = pd.read_parquet(folder / "ratings.parquet")
    assert len(ratings) == 648 and list(ratings.columns) == list(RATING_COLUMNS)
    assert pd.read_csv(folder / "strategies.csv")["toxicity"].tolist() == pytest.approx(
        [3.25, 2.25, 2.75]
    )
    for figure in ("toxicity_by_turn", "intervention_rate", "diversity"):
        with Image.open(folder / f"{figure}.png") as image:
            assert round(image.info["dpi"][0]) == 300 and image.width > 1000
        assert (folder / f"{figure}.pdf").read_bytes().startswith(b"%PDF")
    assert "Mixed Linear Model" in (folder / "regression.txt").read_text("utf-8")
    assert "4 invalid" in (folder / "notes.txt").read_text("utf-8")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    listing = readme.split("ls logs/discussion_analysis/\n", 1)[1].split("```", 1)[0]
    assert sorted(listing.split()) == sorted(p.name for p in folder.iterdir())  # README is true


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(
    planted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = planted
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "comments": ["x", "y"]}\n{"id": "b", "comments": [1]}\n', "utf-8")
    empty = write_discussions(
        tmp_path / "cbt.db", [Discussion("none", {}, [Line("client", "Hi.")], False)]
    )
    a_file = tmp_path / "taken"
    a_file.write_text("keep me", encoding="utf-8")
    folder = tmp_path / "out"
    cases = [
        (["--reference", str(bad)], f"{bad}:2: 'comments' is not a list of strings"),
        (["--run", "run-9"], "no such run: 'run-9'"),
        ([str(empty)], "no discussion episodes"),
        ([str(tmp_path / "missing.db")], "database file not found"),
    ]
    for extra, message in cases:
        target = [] if extra[0].endswith(".db") else [str(db)]
        code, _, stderr = cli(["analyze", "discussion", *target, *extra, "--out", str(folder)],
                              capsys)  # fmt: skip
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], stderr
        assert not folder.exists()
    code, _, stderr = cli(["analyze", "discussion", str(db), "--out", str(a_file)], capsys)
    assert code == 2 and "not a folder" in stderr
    assert file_snapshot(a_file) == b"keep me"
