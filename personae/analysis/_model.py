"""The mixed-effects regression of comment toxicity on strategy and turn (statsmodels MixedLM).

`toxicity ~ C(strategy, Treatment(REF)) * turn_c` with a random intercept per discussion, where
`turn_c` is the comment's turn index minus the mean over all comments and REF is `none` (else
the first strategy). Degenerate data — no rated comments, fewer than `MIN_DISCUSSIONS`
discussions, a single strategy, constant toxicity, a failed or non-converged fit — is a note,
never an exception: one strategy fits `toxicity ~ turn_c`, the others fit nothing.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Fewest discussions a random intercept per discussion is fitted on.
MIN_DISCUSSIONS = 3
#: The coefficient table's columns.
COLUMNS = ["term", "label", "coef", "std_err", "z", "p_value", "ci_low", "ci_high"]


def _label(term: str, reference: str) -> str:
    level = re.search(r"\[T\.(.+?)\]", term)
    if term == "Intercept":
        return f"intercept: {reference} at the mean turn"
    if term == "turn_c":
        return f"turn slope: {reference}"
    if level and term.endswith(":turn_c"):
        return f"turn slope: {level.group(1)} minus {reference}"
    if level:
        return f"{level.group(1)} minus {reference}"
    return term


#: statsmodels' own retries between optimizers: the outcome is what `converged` says.
_CHATTER = ("Retrying MixedLM", "optimization failed", "failed to converge", "Check mle_retvals")


def _warning_notes(messages: Sequence[str], converged: bool) -> list[str]:
    """What the fit's warnings mean for a reader, once each."""
    found = []
    if not converged:
        found.append("regression: the fit did not converge: treat its estimates with care")
    for message in dict.fromkeys(m.splitlines()[0] for m in messages):
        if "boundary" in message:
            found.append(
                "regression: the variance of the discussion intercepts is at its boundary (0): "
                "discussions differ little beyond strategy and turn"
            )
        elif "Hessian" in message:
            found.append(
                "regression: the Hessian is not positive definite: standard errors may be off"
            )
        elif not any(c in message for c in _CHATTER):
            found.append(f"regression: {message}")
    return found


def fit_mixed_model(
    comments: pd.DataFrame, strategies: Sequence[str], notes: list[str]
) -> tuple[pd.DataFrame, str]:
    """Fit the model on rated comments (`episode_id`, `strategy`, `turn`, `toxicity`).

    Args:
        comments: One row per comment with its (annotators' mean) toxicity; NaN rows dropped.
        strategies: The strategies in table order; the first is the reference unless `none` is
            among them.
        notes: Where to say what was not fitted, or what the fit warned about.

    Returns:
        The coefficient table (`COLUMNS`, then the discussion and residual variances) and
        statsmodels' summary text; an empty table and "" when nothing was fitted.
    """
    empty = pd.DataFrame(columns=COLUMNS)
    data = comments.dropna(subset=["toxicity"])
    discussions = data["episode_id"].nunique()
    if discussions < MIN_DISCUSSIONS:
        notes.append(
            f"regression: {discussions} discussion(s) with rated comments, fewer than "
            f"{MIN_DISCUSSIONS}: not fitted"
        )
        return empty, ""
    if data["toxicity"].nunique() < 2:
        notes.append("regression: every comment has the same toxicity: not fitted")
        return empty, ""
    present = [s for s in strategies if s in set(data["strategy"])]
    reference = "none" if "none" in present else present[0]
    data = data.assign(
        toxicity=data["toxicity"].astype(float),
        turn_c=data["turn"].astype(float) - float(data["turn"].mean()),
        strategy=data["strategy"].astype(str),
    )
    if len(present) == 1:
        formula = "toxicity ~ turn_c"
        notes.append(f"regression: one strategy only ({reference}): no strategy effect fitted")
    else:
        formula = f"toxicity ~ C(strategy, Treatment({reference!r})) * turn_c"
        if reference != "none":
            notes.append(f"regression: no 'none' discussions; strategies compared to {reference}")
    import statsmodels.formula.api as smf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = smf.mixedlm(formula, data, groups=data["episode_id"]).fit(reml=True)
        except (np.linalg.LinAlgError, ValueError) as exc:
            notes.append(f"regression: the fit failed ({str(exc).splitlines()[0]})")
            return empty, ""
    notes.extend(_warning_notes([str(w.message) for w in caught], bool(result.converged)))
    fixed = list(result.fe_params.index)
    ci = result.conf_int().loc[fixed]
    table = pd.DataFrame(
        {
            "term": fixed,
            "label": [_label(t, reference) for t in fixed],
            "coef": result.fe_params.to_numpy(float),
            "std_err": result.bse_fe.to_numpy(float),
            "z": result.tvalues.loc[fixed].to_numpy(float),
            "p_value": result.pvalues.loc[fixed].to_numpy(float),
            "ci_low": ci.iloc[:, 0].to_numpy(float),
            "ci_high": ci.iloc[:, 1].to_numpy(float),
        }
    )
    variances = pd.DataFrame(
        {
            "term": ["Group Var", "Residual Var"],
            "label": ["variance of the discussion intercepts", "residual variance"],
            "coef": [float(np.asarray(result.cov_re)[0, 0]), float(result.scale)],
        },
        columns=COLUMNS,
    )
    return pd.concat([table, variances], ignore_index=True), str(result.summary().as_text())
