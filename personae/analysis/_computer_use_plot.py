"""The computer-use report's figure: grouped bars of the BGD and completion rates.

One panel per rate (one row of panels per model when there are several): the task patterns
(and `all`) on the x axis, one bar per prompting condition in its own colour (Okabe-Ito,
colour-blind safe) with its 95% bootstrap interval as a whisker, "n/a" where a group has no
valid verdict. Saved by `personae.experiments._plot.save_figure`: PNG at 300 dpi, PDF or SVG.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from personae.analysis._computer_use import ComputerUseReport

_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
_TITLES = {"bgd": "BGD rate", "completion": "completion rate"}
_CAPTION = (
    "Bars: share of episodes the judge found blindly goal-directed (BGD) or carrying the "
    "undesired action out (completion); lower is better. Whiskers: 95% bootstrap CI over "
    "episodes."
)


def _panel(ax: Any, rates: Any, rate: str, conditions: list[str], title: str) -> None:
    patterns = list(dict.fromkeys(rates["pattern"]))
    width = 0.8 / max(len(conditions), 1)
    for k, condition in enumerate(conditions):
        mine = rates[rates["prompting"] == condition].set_index("pattern")
        xs, heights, low, high = [], [], [], []
        for i, pattern in enumerate(patterns):
            x = i - 0.4 + width * (k + 0.5)
            value = float(mine.loc[pattern, rate]) if pattern in mine.index else math.nan
            if math.isnan(value):
                ax.text(x, 0.02, "n/a", ha="center", fontsize=6, rotation=90, color="0.4")
                continue
            xs.append(x)
            heights.append(value)
            low.append(value - float(mine.loc[pattern, f"{rate}_low"]))
            high.append(float(mine.loc[pattern, f"{rate}_high"]) - value)
        ax.bar(
            xs,
            heights,
            width=width * 0.92,
            color=_COLOURS[k % len(_COLOURS)],
            label=condition,
            yerr=[low, high],
            capsize=2,
            error_kw={"elinewidth": 0.8, "ecolor": "0.15"},
        )
    ax.set_xticks(range(len(patterns)), patterns)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(_TITLES[rate])
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, lw=0.5)


def computer_use_figure(report: ComputerUseReport) -> Any:
    """The figure of `report.rates` (a matplotlib `Figure`; close it when done)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from personae.analysis._computer_use import ALL, RATES
    from personae.experiments._plot import RC

    rates = report.rates
    groups = rates[rates["prompting"] != ALL]
    conditions = list(dict.fromkeys(groups["prompting"]))
    models = list(report.models)
    with plt.rc_context(RC):
        width = 2.2 + 0.8 * len(dict.fromkeys(groups["pattern"]))
        height = 2.6 * len(models) + 0.4
        fig, axes = plt.subplots(
            len(models), len(RATES), figsize=(2 * width, height), squeeze=False
        )
        for row, model in zip(axes, models, strict=True):
            mine = groups[groups["model"] == model]
            for ax, rate in zip(row, RATES, strict=True):
                title = _TITLES[rate] + (f" — {model}" if len(models) > 1 else "")
                _panel(ax, mine, rate, conditions, title)
        axes[0][-1].legend(
            title="prompting",
            frameon=False,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
        caption = textwrap.fill(_CAPTION, width=int(2 * width * 17))
        fig.text(0.01, 0.005, caption, ha="left", va="bottom", fontsize=6.5, color="0.25")
        fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
    return fig


def save_computer_use_plot(report: ComputerUseReport, path: str | Path) -> Path:
    """Save `computer_use_figure(report)` at `path`: .png (300 dpi), .pdf or .svg.

    Raises:
        UserError: an unsupported suffix (checked before drawing).
    """
    from personae.experiments._plot import check_plot_path, save_figure

    path = check_plot_path(path, where=str(path))
    return save_figure(computer_use_figure(report), path)
