"""Accuracy-vs-budget plots (matplotlib, no display needed): one panel per explanation style, one
line per intervention function (same colour in every panel) with its bootstrap confidence band
shaded; the misaligned teacher is a dashed black line in every panel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from personae.experiments._scoring import Curve


def save_plot(curves: Sequence[Curve], path: str | Path, *, title: str = "") -> Path:
    """Save the curves as a PNG (or any format matplotlib infers from the suffix) at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    styles = list(dict.fromkeys(c.style for c in curves if c.style != "misaligned")) or [""]
    misaligned = [c for c in curves if c.style == "misaligned"]
    functions = list(dict.fromkeys(c.function for c in curves if c.style != "misaligned"))
    palette = plt.get_cmap("tab10")
    colour = {f: palette(i % 10) for i, f in enumerate(functions)}
    fig, axes = plt.subplots(
        1, len(styles), figsize=(4.2 * len(styles) + 2.4, 4.4), dpi=120, sharey=True, squeeze=False
    )
    try:
        for ax, style in zip(axes[0], styles, strict=True):
            shown = [c for c in curves if c.style == style] + misaligned
            for curve in shown:
                x = [100 * b for b in curve.budgets]
                bad = curve.style == "misaligned"
                ax.plot(
                    x,
                    curve.accuracy,
                    "--" if bad else "-",
                    marker="o",
                    ms=3,
                    color="black" if bad else colour[curve.function],
                    label="misaligned teacher" if bad else curve.function,
                )
                band = "black" if bad else colour[curve.function]
                ax.fill_between(x, curve.low, curve.high, color=band, alpha=0.08)
            ax.set_title(f"{style} explanations" if style else "")
            ax.set_xlabel("budget (% of test items explained)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("student accuracy")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
        if curves:
            seeds = curves[0].n_seeds
            fig.suptitle(
                f"{title}  ({curves[0].n_items} items, {seeds} seed{'' if seeds == 1 else 's'})"
            )
        fig.tight_layout(rect=(0, 0, 1 - 2.2 / fig.get_figwidth(), 1))
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
