"""Figures of the discussion analysis (matplotlib, Agg; no display needed), each saved as PNG
(300 dpi) and PDF:

- `toxicity_by_turn`: mean comment toxicity per turn, one line per strategy (its own colour,
  line style and marker) with its 95% bootstrap band over discussions;
- `intervention_rate`: the facilitator's intervention rate per strategy (bars; "n/a" where the
  facilitator had no turn);
- `diversity`: each discussion's diversity (dots) and the strategy mean with its 95% interval,
  the human reference's mean as a dashed line when given.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from personae.analysis._discussion import DiscussionAnalysis

_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_CI_NOTE = "shaded: 95% bootstrap CI over discussions"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tick(name: str) -> str:
    return textwrap.fill(name.replace("_", " "), 12)


def _save(fig: Any, folder: Path, stem: str) -> list[Path]:
    paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=300, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def _toxicity_by_turn(plt: Any, analysis: DiscussionAnalysis, folder: Path) -> list[Path]:
    curves = analysis.toxicity_by_turn
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    try:
        colours = plt.get_cmap("tab10")
        for i, strategy in enumerate(dict.fromkeys(curves["strategy"])):
            c = curves[curves["strategy"] == strategy]
            colour = colours(i % 10)
            ax.plot(
                c["turn"],
                c["toxicity"],
                linestyle=_STYLES[i % len(_STYLES)],
                marker=_MARKERS[i % len(_MARKERS)],
                markersize=4,
                linewidth=1.6,
                color=colour,
                label=strategy.replace("_", " "),
            )
            ax.fill_between(
                c["turn"], c["toxicity_low"], c["toxicity_high"], color=colour, alpha=0.12
            )
        ax.set_xlabel("turn")
        ax.set_ylabel("toxicity (mean annotator rating)")
        ax.set_title("Toxicity by turn per facilitation strategy", fontsize=11)
        ax.grid(alpha=0.3)
        if curves.empty:
            ax.text(0.5, 0.5, "no rated comments", ha="center", transform=ax.transAxes)
        else:
            ax.legend(
                title="strategy",
                fontsize=8,
                title_fontsize=8,
                frameon=False,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
            )
        fig.text(0.01, -0.02, _CI_NOTE, fontsize=8, color="0.3")
        return _save(fig, folder, "toxicity_by_turn")
    finally:
        plt.close(fig)


def _intervention_rate(plt: Any, analysis: DiscussionAnalysis, folder: Path) -> list[Path]:
    table = analysis.strategies
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(table) + 1.5), 3.8))
    try:
        rates = [float(r) for r in table["intervention_rate"]]
        x = list(range(len(rates)))
        ax.bar(x, [0.0 if math.isnan(r) else r for r in rates], color="#4878a8", width=0.6)
        for xi, rate in zip(x, rates, strict=True):
            text = "n/a" if math.isnan(rate) else f"{rate:.2f}"
            ax.text(xi, (0 if math.isnan(rate) else rate) + 0.02, text, ha="center", fontsize=8)
        ax.set_xticks(x, [_tick(s) for s in table["strategy"]], fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("facilitator intervention rate")
        ax.set_title("Facilitator lines / (lines + passes)", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        return _save(fig, folder, "intervention_rate")
    finally:
        plt.close(fig)


def _diversity(plt: Any, analysis: DiscussionAnalysis, folder: Path) -> list[Path]:
    per = analysis.discussions
    table = analysis.diversity.set_index("strategy")
    strategies = list(dict.fromkeys(analysis.strategies["strategy"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(strategies) + 1.5), 3.8))
    try:
        for i, strategy in enumerate(strategies):
            values = per.loc[per["strategy"] == strategy, "diversity"].dropna().to_numpy(float)
            spread = [i + 0.18 * ((k % 7) / 6 - 0.5) for k in range(len(values))]
            ax.scatter(spread, values, s=10, color="0.55", alpha=0.7, zorder=2)
            row = table.loc[strategy]
            if not math.isnan(float(row["diversity"])):
                ax.errorbar(
                    [i + 0.22],
                    [row["diversity"]],
                    yerr=[
                        [row["diversity"] - row["diversity_low"]],
                        [row["diversity_high"] - row["diversity"]],
                    ],
                    fmt="D",
                    color="#c0392b",
                    markersize=5,
                    capsize=4,
                    zorder=3,
                )
        if "human reference" in table.index:
            mean = float(table.loc["human reference", "diversity"])
            ax.axhline(mean, linestyle="--", color="0.2", linewidth=1, label="human reference mean")
            ax.legend(fontsize=8, frameon=False, loc="lower right")
        ax.set_xticks(range(len(strategies)), [_tick(s) for s in strategies], fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("diversity (1 - mean ROUGE-L F1)")
        ax.set_title("Comment diversity per discussion", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        fig.text(
            0.01,
            -0.02,
            "dots: discussions; red: mean with 95% bootstrap CI",
            fontsize=8,
            color="0.3",
        )
        return _save(fig, folder, "diversity")
    finally:
        plt.close(fig)


def save_figures(analysis: DiscussionAnalysis, folder: Path) -> list[Path]:
    """Write the three figures into `folder` (which must exist) as PNG and PDF; return paths."""
    plt = _pyplot()
    return [
        *_toxicity_by_turn(plt, analysis, folder),
        *_intervention_rate(plt, analysis, folder),
        *_diversity(plt, analysis, folder),
    ]
