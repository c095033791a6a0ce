"""The measures of the discussion analysis, on plain arrays: each returns NaN (never raises) where
the data cannot support it, and, where useful, says why.

- `gini`: inequality of comment counts (0: all equal; (n-1)/n: one person wrote everything).
- `diversity`: 1 - mean pairwise ROUGE-L F1 between a discussion's comments (`rouge-score`).
- `jensen_shannon`: divergence (base 2, in [0, 1]) between two samples' Gaussian kernel density
  estimates on a grid over [0, 1].
- `krippendorff_alpha`: ordinal agreement of a raters x units matrix (NaN: not rated).
- `agreement`: the share of paired yes/no verdicts that agree, and Cohen's kappa of the pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from itertools import combinations
from typing import Any

import numpy as np

#: Points of the grid over [0, 1] that the densities are compared on.
GRID_POINTS = 512


def gini(counts: Sequence[float]) -> float:
    """Gini coefficient of `counts`: mean absolute difference over all ordered pairs, divided by
    twice the mean (population form; NaN when empty or all zero)."""
    x = np.asarray(counts, dtype=float)
    if x.size == 0 or x.sum() <= 0:
        return math.nan
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean()))


@cache
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 between two texts (rouge-score's tokenizer: lower case, letters and digits)."""
    return float(_scorer().score(a, b)["rougeL"].fmeasure)


def diversity(texts: Sequence[str]) -> float:
    """1 - mean ROUGE-L F1 over all pairs of `texts` (NaN with fewer than two)."""
    pairs = list(combinations(texts, 2))
    if not pairs:
        return math.nan
    return 1.0 - float(np.mean([rouge_l(a, b) for a, b in pairs]))


def density(values: Sequence[float]) -> np.ndarray | None:
    """A Gaussian KDE of `values` on the grid over [0, 1], normalised to sum 1 (None when the
    values are too few or all equal for a density)."""
    from scipy.stats import gaussian_kde

    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size < 2 or np.ptp(v) == 0:
        return None
    grid = np.linspace(0.0, 1.0, GRID_POINTS)
    p = gaussian_kde(v)(grid)
    total = float(p.sum())
    return p / total if total > 0 else None


def jensen_shannon(a: Sequence[float], b: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2) between the densities of samples `a` and `b` on [0, 1]
    (NaN when either has no density: fewer than two values, or all equal)."""
    from scipy.spatial.distance import jensenshannon

    p, q = density(a), density(b)
    if p is None or q is None:
        return math.nan
    return float(jensenshannon(p, q, base=2) ** 2)


def krippendorff_alpha(matrix: np.ndarray) -> float:
    """Ordinal Krippendorff's alpha of a raters x units matrix (NaN: missing), over the values
    observed; NaN when no unit has two ratings or every rating is the same value."""
    import krippendorff

    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] < 2 or not np.any(np.sum(~np.isnan(m), axis=0) >= 2):
        return math.nan
    if np.unique(m[~np.isnan(m)]).size < 2:
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):  # no expected disagreement: NaN
        return float(krippendorff.alpha(reliability_data=m, level_of_measurement="ordinal"))


def agreement(a: Sequence[bool], b: Sequence[bool]) -> tuple[float, float]:
    """Share of the pairs `(a[i], b[i])` that agree, and their Cohen's kappa (statsmodels, on
    the 2 x 2 table); (NaN, NaN) with no pairs, kappa NaN when chance agreement is 1 (both
    sides always said the same one thing)."""
    from statsmodels.stats.inter_rater import cohens_kappa

    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.size != y.size:
        raise ValueError("agreement needs pairs: the two sequences differ in length")
    if x.size == 0:
        return math.nan, math.nan
    table = np.array([[np.sum(x & y), np.sum(x & ~y)], [np.sum(~x & y), np.sum(~x & ~y)]])
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = float(cohens_kappa(table, return_results=False))
    return float(np.mean(x == y)), kappa
