"""Scoring budgets from per-item outcomes, as the original study does.

Each item's outcome is computed once without and once with each explanation style
(`StyleOutcomes`); an intervention function's ranking then decides which items are explained at
each budget, and the accuracy at that budget is the mean over items of the with-explanation
outcome where explained and the without-explanation outcome elsewhere. Seeds are averaged per
item; confidence intervals are percentile bootstraps over items (`scipy.stats.bootstrap`), seeded
per budget from the bootstrap seed, so a table is the same whenever it is scored. An explained
item without a with-explanation outcome cannot be scored: `MissingOutcomes` says which.
`expected=True` scores probabilities of the gold answer instead of 0/1 correctness: the
accuracy a student with those probabilities gets in expectation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from personae.experiments._interventions import explained_at

Ranking = Sequence[tuple[str, float]]


class MissingOutcomes(ValueError):
    """An arm explains, at some budget, items whose with-explanation outcome was never
    computed (the run did not deliver that explanation): scoring it needs model calls.

    Attributes:
        style: Explanation style.
        function: Intervention function.
        budget: The budget.
        seed: The experiment seed.
        item_ids: The explained items without an outcome.
    """

    def __init__(
        self, style: str, function: str, budget: float, seed: int, item_ids: Sequence[str]
    ) -> None:
        self.style, self.function, self.budget = style, function, budget
        self.seed, self.item_ids = seed, tuple(item_ids)
        super().__init__(
            f"{function} [{style}] at budget {budget:g} explains {len(item_ids)} items with no "
            f"with-explanation outcome (seed {seed}, e.g. {item_ids[0]})"
        )


@dataclass(frozen=True)
class StyleOutcomes:
    """One seed, one explanation style: every test item without and with the explanation.

    Attributes:
        item_ids: Test items, in test-set order.
        pre_correct: 1.0 where the student was right on its own, 0.0 where wrong, NaN where the
            item failed.
        pre_p: The student's probability of the gold answer on its own.
        post_correct: The same with the explanation (NaN where it was not computed).
        post_p: The student's probability of the gold answer with the explanation.
        n_items: The N of ⌊b·N⌋: items that were ranked (default: items that did not fail).
    """

    item_ids: tuple[str, ...]
    pre_correct: np.ndarray
    pre_p: np.ndarray
    post_correct: np.ndarray
    post_p: np.ndarray
    n_items: int = -1

    def __post_init__(self) -> None:
        if self.n_items < 0:
            object.__setattr__(self, "n_items", int(np.sum(~np.isnan(self.pre_correct))))

    def mask(self, explained: set[str]) -> np.ndarray:
        """Boolean mask of `explained` over `item_ids`."""
        return np.array([i in explained for i in self.item_ids], dtype=bool)

    def missing(self, explained: set[str]) -> list[str]:
        """Items of `explained` that did not fail but have no with-explanation outcome."""
        gap = self.mask(explained) & np.isnan(self.post_correct) & ~np.isnan(self.pre_correct)
        return [i for i, m in zip(self.item_ids, gap, strict=True) if m]

    def per_item(self, explained: set[str], *, expected: bool = False) -> np.ndarray:
        """Each item's outcome when exactly `explained` are explained (`ValueError` when an
        explained item has no with-explanation outcome)."""
        pre, post = (self.pre_p, self.post_p) if expected else (self.pre_correct, self.post_correct)
        if self.missing(explained):
            raise ValueError("an explained item has no with-explanation outcome")
        return np.where(self.mask(explained), post, pre)


def per_item_at_budgets(
    outcomes: StyleOutcomes, ranking: Ranking, budgets: Sequence[float], *, expected: bool = False
) -> np.ndarray:
    """Outcomes per (budget, item) for one seed: shape (len(budgets), len(item_ids))."""
    n = outcomes.n_items
    return np.stack(
        [outcomes.per_item(explained_at(ranking, n, b), expected=expected) for b in budgets]
    )


def mean_ci(
    values: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | Sequence[int] = 0,
) -> tuple[float, float, float]:
    """Mean of `values` (NaN ignored) and its percentile-bootstrap confidence interval
    (`seed`: an int or a sequence of ints, as `numpy.random.default_rng` takes them)."""
    v = values[~np.isnan(values)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(v))
    if v.size < 2 or np.all(v == v[0]):
        return mean, mean, mean
    res = stats.bootstrap(
        (v,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _seed_mean(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Per-item mean over seeds (NaN where an item has no value in any seed)."""
    stack = np.stack(rows)
    counts = np.sum(~np.isnan(stack), axis=0)
    sums = np.nansum(stack, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass(frozen=True)
class Curve:
    """Accuracy vs. budget for one intervention function and explanation style.

    Attributes:
        label: Row label ("expected_utility", or "expected_utility [personalized]").
        style: Explanation style.
        function: Intervention function.
        budgets: The budgets, ascending as given.
        accuracy: Mean accuracy at each budget (items averaged over seeds).
        low: Lower bootstrap bound at each budget.
        high: Upper bootstrap bound at each budget.
        n_items: Items scored.
        n_seeds: Seeds averaged.
        confidence: Confidence level of `low` and `high`.
    """

    label: str
    style: str
    function: str
    budgets: tuple[float, ...]
    accuracy: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    n_items: int
    n_seeds: int
    confidence: float = 0.95

    def at(self, budget: float) -> float:
        """Mean accuracy at `budget`."""
        return self.accuracy[self.budgets.index(budget)]


def arm_label(style: str, function: str, styles: Sequence[str]) -> str:
    """Table label of an arm: the function, with its style when several styles are compared."""
    if style == "misaligned" and function == "misaligned":
        return "misaligned"
    return function if len(set(styles) - {"misaligned"}) <= 1 else f"{function} [{style}]"


def score_curves(
    outcomes: Mapping[int, Mapping[str, StyleOutcomes]],
    rankings: Mapping[int, Mapping[tuple[str, str], Ranking]],
    arms: Sequence[tuple[str, str]],
    budgets: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    expected: bool = False,
    seed: int = 0,
) -> list[Curve]:
    """One `Curve` per arm (style, function), averaging seeds per item.

    Args:
        outcomes: seed -> style -> outcomes.
        rankings: seed -> (style, function) -> ranking.
        arms: (style, function) pairs to score, in table order.
        budgets: Budgets (fractions of the test items).
        resamples: Bootstrap resamples.
        confidence: Confidence level of the intervals.
        expected: Score probabilities of the gold answer instead of correctness.
        seed: Bootstrap seed (budget k resamples with `default_rng([k, seed])`; seed 0 is
            `default_rng(k)`).

    Raises:
        MissingOutcomes: an arm explains an item at a budget with no with-explanation outcome.
    """
    styles = [s for s, _ in arms]
    curves = []
    for style, function in arms:
        for run_seed in sorted(outcomes):
            outcome, ranking = outcomes[run_seed][style], rankings[run_seed][(style, function)]
            for budget in budgets:
                missing = outcome.missing(explained_at(ranking, outcome.n_items, budget))
                if missing:
                    raise MissingOutcomes(style, function, budget, run_seed, missing)
        per_seed = [
            per_item_at_budgets(outcomes[s][style], rankings[s][(style, function)], budgets,
                                expected=expected)
            for s in sorted(outcomes)
        ]  # fmt: skip
        means, lows, highs = [], [], []
        for b in range(len(budgets)):
            values = _seed_mean([rows[b] for rows in per_seed])
            mean, low, high = mean_ci(
                values, resamples=resamples, confidence=confidence, seed=[b, seed]
            )
            means.append(mean)
            lows.append(low)
            highs.append(high)
        first = outcomes[sorted(outcomes)[0]][style]
        curves.append(
            Curve(
                label=arm_label(style, function, styles),
                style=style,
                function=function,
                budgets=tuple(budgets),
                accuracy=tuple(means),
                low=tuple(lows),
                high=tuple(highs),
                n_items=len(first.item_ids),
                n_seeds=len(per_seed),
                confidence=confidence,
            )
        )
    return curves


@dataclass(frozen=True)
class MultiTurnRow:
    """Accuracy on unexplained items when earlier explained items are demonstrations.

    Attributes:
        style: Explanation style of the demonstrations.
        function: Intervention function that chose the explained items.
        budget: Budget.
        accuracy: Mean accuracy on the unexplained items, explained items as demonstrations.
        low: Lower bootstrap bound.
        high: Upper bootstrap bound.
        baseline: Mean accuracy of the student alone on the same items.
        n_items: Distinct unexplained items scored (over all seeds).
    """

    style: str
    function: str
    budget: float
    accuracy: float
    low: float
    high: float
    baseline: float
    n_items: int


def score_multi_turn(
    with_demos: Sequence[np.ndarray],
    alone: Sequence[np.ndarray],
    *,
    style: str,
    function: str,
    budget: float,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MultiTurnRow:
    """Aggregate per-seed item vectors (NaN for explained items) into a `MultiTurnRow`
    (`seed`: the bootstrap seed)."""
    values = _seed_mean(with_demos)
    base = _seed_mean(alone)
    mean, low, high = mean_ci(values, resamples=resamples, confidence=confidence, seed=[0, seed])
    baseline = float(np.nanmean(base)) if np.any(~np.isnan(base)) else math.nan
    return MultiTurnRow(
        style, function, budget, mean, low, high, baseline, int(np.sum(~np.isnan(values)))
    )
