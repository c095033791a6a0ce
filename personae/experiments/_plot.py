"""Figures of a teaching run that a paper can use (matplotlib, no display needed).

The format follows the file's suffix: PNG at 300 dpi, or PDF or SVG (vector, text kept as text,
fonts embedded as TrueType). Accuracy vs. budget is drawn one row per explanation style; a row
holds every function in one panel when there are at most `MAX_LINES`, otherwise the functions
are grouped into panels (confidence baselines, mental-model functions, the rest) of at most
`MAX_LINES` lines, each with `random` as the reference. A function keeps its colour and marker
in every panel; the upper bounds (`true_utility`, `oracle`) are dashed; the misaligned teacher
has its own panel, drawn dash-dotted in black. Multi-turn results, when the run has them, get a
panel per explanation style: accuracy on the unexplained items with error bars, the student
alone on the same items dotted. A caption under the panels says what the lines, the shaded bands
and the bars are.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personae.errors import UserError
from personae.experiments._scoring import Curve, MultiTurnRow

#: Suffix -> dots per inch (None: a vector format).
FORMATS: dict[str, int | None] = {".png": 300, ".pdf": None, ".svg": None}
#: Most lines in one panel.
MAX_LINES = 5
#: Most markers on one line (more budgets: a marker on every k-th).
MAX_MARKERS = 11
REFERENCE = "random"
BOUNDS = ("true_utility", "oracle")
#: Panels a long list of functions is grouped into (title, functions), in this order.
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("baselines", ("teacher_confidence", "least_student_confidence", "oracle")),
    ("mental-model functions", ("expected_utility", "pre_utility", "post_utility", "true_utility")),
)
#: Colour-blind-safe colours (Okabe-Ito) and markers of the shipped functions.
_LOOK: dict[str, tuple[str, str]] = {
    "random": ("#7f7f7f", "o"),
    "teacher_confidence": ("#E69F00", "s"),
    "least_student_confidence": ("#56B4E9", "^"),
    "expected_utility": ("#0072B2", "D"),
    "pre_utility": ("#009E73", "v"),
    "post_utility": ("#CC79A7", "P"),
    "true_utility": ("#D55E00", "*"),
    "oracle": ("#882255", "X"),
    "misaligned": ("#000000", "x"),
}
_MORE_COLOURS = ("#117733", "#332288", "#AA4499", "#44AA99", "#999933", "#661100", "#6699CC")
_MORE_MARKERS = ("<", ">", "h", "p", "8", "d", "H")


def check_plot_path(path: str | Path, where: str = "--plot") -> Path:
    """`path` if its suffix names a supported format, else a `UserError` (nothing is run)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UserError(
            f"unsupported plot format {path.suffix or '(no suffix)'!r}",
            where=where,
            fix="use a .png (300 dpi), .pdf or .svg path",
        )
    return path


@dataclass
class Panel:
    """One panel: accuracy curves vs. budget, or multi-turn rows (one kind per panel)."""

    title: str
    curves: list[Curve] = field(default_factory=list)
    multi_turn: list[MultiTurnRow] = field(default_factory=list)

    @property
    def lines(self) -> int:
        """Lines drawn (a multi-turn function draws two: with demonstrations, and alone)."""
        return len(self.curves) + 2 * len({r.function for r in self.multi_turn})


def _chunks(names: list[str], size: int) -> list[list[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)]


def _style_panels(style: str, curves: list[Curve]) -> list[Panel]:
    """The panels of one explanation style: all in one, or grouped with the reference."""
    head = f"{style} explanations" if style else "accuracy vs. budget"
    if len(curves) <= MAX_LINES:
        return [Panel(head, curves)]
    by_name = {c.function: c for c in curves}
    reference = [by_name[REFERENCE]] if REFERENCE in by_name else []
    room = MAX_LINES - len(reference)
    grouped = {f for _, members in FAMILIES for f in members}
    groups = [(title, [f for f in members if f in by_name]) for title, members in FAMILIES]
    rest = [c.function for c in curves if c.function not in grouped and c.function != REFERENCE]
    groups.append(("more functions", rest))
    panels = []
    for title, names in groups:
        for part in _chunks(names, room):
            panels.append(Panel(f"{style}: {title}", reference + [by_name[f] for f in part]))
    return panels


def plan_panels(
    curves: Sequence[Curve], multi_turn: Sequence[MultiTurnRow] = ()
) -> list[list[Panel]]:
    """The figure's rows of panels: one row per explanation style, then the misaligned
    teacher and the multi-turn panels (all in one row when there are at most three panels)."""
    styles = list(dict.fromkeys(c.style for c in curves if c.style != "misaligned"))
    rows = [_style_panels(s, [c for c in curves if c.style == s]) for s in styles]
    extra: list[Panel] = []
    misaligned = [c for c in curves if c.style == "misaligned"]
    if misaligned:
        first = [c for c in curves if c.style == (styles[0] if styles else "")]
        helpful = [c for c in first if c.function in (REFERENCE, "expected_utility")]
        extra.append(Panel("misaligned teacher", (helpful or first[:1]) + misaligned))
    for style in dict.fromkeys(r.style for r in multi_turn):
        mine = [r for r in multi_turn if r.style == style]
        functions = list(dict.fromkeys(r.function for r in mine))
        for part in _chunks(functions, MAX_LINES // 2):
            extra.append(
                Panel(
                    f"multi-turn ({style} demonstrations)",
                    multi_turn=[r for r in mine if r.function in part],
                )
            )
    if sum(len(r) for r in rows) + len(extra) <= 3:
        return [[p for r in rows for p in r] + extra]
    return [*rows, extra] if extra else rows


def _looks(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Colour and marker of every function (the shipped ones fixed, others in turn)."""
    looks: dict[str, tuple[str, str]] = {}
    k = 0
    for name in names:
        if name in _LOOK:
            looks[name] = _LOOK[name]
        elif name not in looks:
            looks[name] = (
                _MORE_COLOURS[k % len(_MORE_COLOURS)],
                _MORE_MARKERS[k % len(_MORE_MARKERS)],
            )
            k += 1
    return looks


def _caption(curves: Sequence[Curve], multi_turn: Sequence[MultiTurnRow], confidence: float) -> str:
    first = curves[0]
    seeds = f"{first.n_seeds} seed{'' if first.n_seeds == 1 else 's'}"
    text = (
        f"Lines: mean student accuracy over {first.n_items} test items (each item averaged over "
        f"{seeds}) when the function explains the share of items on the x axis. Shaded: "
        f"{confidence:.0%} percentile-bootstrap CI over items."
    )
    why = {"true_utility": "true_utility ranks in hindsight", "oracle": "oracle knows the errors"}
    bounds = [why[b] for b in BOUNDS if any(c.function == b for c in curves)]
    if bounds:
        text += f" Dashed: upper bounds ({'; '.join(bounds)})."
    if any(c.style == "misaligned" for c in curves):
        text += " Dash-dotted: the misaligned teacher."
    if multi_turn:
        text += (
            " Multi-turn: accuracy on the items left unexplained, with earlier explained items "
            f"as demonstrations (bars: {confidence:.0%} CI); dotted: the student alone on them."
        )
    return text


def _draw_curves(ax: Any, panel: Panel, looks: dict[str, tuple[str, str]]) -> None:
    # Curves that coincide (budget 0 always; often more) stay visible: each later line is
    # drawn thinner, with a smaller hollow marker, on top of the earlier ones.
    # The reference goes last: thin, on top of the functions compared with it.
    drawn = [c for c in panel.curves if c.function != REFERENCE or c.style == "misaligned"]
    drawn += [c for c in panel.curves if c not in drawn]
    n = len(drawn)
    for i, curve in enumerate(drawn):
        colour, marker = looks[curve.function]
        bad = curve.style == "misaligned"
        x = [100 * b for b in curve.budgets]
        ax.plot(
            x,
            curve.accuracy,
            "-." if bad else "--" if curve.function in BOUNDS else "-",
            marker=marker,
            markevery=-(-len(x) // MAX_MARKERS),  # a marker every k-th budget when many
            ms=4.5 + 1.1 * (n - 1 - i) + (1.5 if marker == "*" else 0.0),
            mfc="none",
            mew=1.1,
            lw=1.0 + 0.55 * (n - 1 - i),
            color=colour,
            label="misaligned teacher" if bad else curve.function,
            zorder=3 + i,
        )
        ax.fill_between(
            x, curve.low, curve.high, color=colour, alpha=min(0.12, 0.3 / n), lw=0, zorder=1
        )
    ax.set_xlabel("budget (% of test items explained)")
    ax.set_xlim(-3, 103)


def _draw_multi_turn(ax: Any, panel: Panel, looks: dict[str, tuple[str, str]]) -> None:
    functions = list(dict.fromkeys(r.function for r in panel.multi_turn))
    for k, function in enumerate(functions):
        rows = sorted(
            (r for r in panel.multi_turn if r.function == function), key=lambda r: r.budget
        )
        colour, marker = looks[function]
        dodge = 1.5 * (k - (len(functions) - 1) / 2)  # side by side, so the bars do not overlap
        x = [100 * r.budget + dodge for r in rows]
        y = [r.accuracy for r in rows]
        err = [[r.accuracy - r.low for r in rows], [r.high - r.accuracy for r in rows]]
        ax.errorbar(
            x,
            y,
            yerr=err,
            fmt="-",
            marker=marker,
            ms=5,
            lw=1.4,
            color=colour,
            capsize=3,
            label=f"{function}: with demonstrations",
            zorder=3,
        )
        ax.plot(
            x,
            [r.baseline for r in rows],
            ":",
            marker=marker,
            ms=5,
            mfc="none",
            lw=1.4,
            color=colour,
            label=f"{function}: student alone",
            zorder=2,
        )
    budgets = sorted({100 * r.budget for r in panel.multi_turn})
    ax.set_xticks(budgets)
    pad = max(5.0, (budgets[-1] - budgets[0]) * 0.15) if budgets else 5.0
    ax.set_xlim(budgets[0] - pad, budgets[-1] + pad)
    ax.set_xlabel("budget of the explained demonstrations (%)")


def _legend_order(labels: Sequence[str], names: Sequence[str]) -> list[int]:
    """Legend order: the panel's order of functions (`names`), a multi-turn function's line
    with demonstrations before its line alone."""

    def key(k: int) -> tuple[int, bool]:
        name = labels[k].partition(": ")[0]
        return (names.index(name) if name in names else len(names), labels[k].endswith("alone"))

    return sorted(range(len(labels)), key=key)


def _draw_panel(ax: Any, panel: Panel, looks: dict[str, tuple[str, str]]) -> None:
    if panel.curves:
        _draw_curves(ax, panel, looks)
    else:
        _draw_multi_turn(ax, panel, looks)
    ax.set_title(panel.title)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3, lw=0.5)
    ax.set_ylabel("accuracy on unexplained items" if panel.multi_turn else "student accuracy")
    names = [
        "misaligned teacher" if curve.style == "misaligned" else curve.function
        for curve in panel.curves
    ] + [row.function for row in panel.multi_turn]
    handles, labels = ax.get_legend_handles_labels()
    order = _legend_order(labels, names)
    ax.legend(
        [handles[k] for k in order],
        [labels[k] for k in order],
        loc="best",
        frameon=True,
        framealpha=0.85,
        edgecolor="none",
    )


#: Type sizes for a figure a column or a page wide, and fonts a journal accepts (TrueType
#: embedded in PDF, text kept as text in SVG); a fixed SVG salt keeps its ids stable.
RC: Any = {
    "font.size": 8,
    "axes.titlesize": 9,
    "legend.fontsize": 7,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "svg.hashsalt": "personae",
}


def teaching_figure(
    curves: Sequence[Curve],
    *,
    title: str = "",
    multi_turn: Sequence[MultiTurnRow] = (),
    confidence: float | None = None,
) -> Any:
    """The figure of `curves` and `multi_turn` (a matplotlib `Figure`; close it when done).

    Args:
        curves: The curves, in table order.
        title: The figure's title (e.g. the scenario's name).
        multi_turn: Multi-turn rows to plot too.
        confidence: Level of the curves' bands, for the caption (default: the curves').

    Raises:
        ValueError: no curves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("no curves to plot")
    level = curves[0].confidence if confidence is None else confidence
    rows = plan_panels(curves, multi_turn)
    looks = _looks([c.function for c in curves] + [r.function for r in multi_turn])
    ncols = max(len(r) for r in rows)
    width, height = 3.5 * ncols, 2.9 * len(rows)
    caption = textwrap.fill(
        _caption(curves, multi_turn, level), width=int(width * 19), break_on_hyphens=False
    )
    caption_in = 0.13 * (caption.count("\n") + 1) + 0.1
    total = height + caption_in + 0.4
    with plt.rc_context(RC):
        fig, axes = plt.subplots(len(rows), ncols, figsize=(width, total), squeeze=False)
        for ax_row, row in zip(axes, rows, strict=True):
            for k, ax in enumerate(ax_row):
                if k < len(row):
                    _draw_panel(ax, row[k], looks)
                else:
                    ax.set_visible(False)
        first = curves[0]
        seeds = f"{first.n_seeds} seed{'' if first.n_seeds == 1 else 's'}"
        fig.suptitle(
            f"{title + ': ' if title else ''}student accuracy vs. teaching budget "
            f"({first.n_items} items, {seeds})",
            fontsize=10,
        )
        fig.text(0.01, 0.01, caption, ha="left", va="bottom", fontsize=7)
        fig.tight_layout(rect=(0, caption_in / total, 1, 1))
    return fig


def save_plot(
    curves: Sequence[Curve],
    path: str | Path,
    *,
    title: str = "",
    multi_turn: Sequence[MultiTurnRow] = (),
    confidence: float | None = None,
) -> Path:
    """Save `teaching_figure(curves, ...)` at `path`: a .png (300 dpi), .pdf or .svg file
    (folders are created).

    Raises:
        UserError: an unsupported suffix.
        ValueError: no curves.
    """
    path = check_plot_path(path, where=str(path))
    fig = teaching_figure(curves, title=title, multi_turn=multi_turn, confidence=confidence)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save the matplotlib figure `fig` at `path` and close it: a .png (300 dpi), .pdf or .svg
    file in the journal settings of `RC` (folders are created), with no creation date, so the
    same figure gives the same bytes.

    Raises:
        UserError: an unsupported suffix.
    """
    import matplotlib.pyplot as plt

    try:
        path = check_plot_path(path, where=str(path))
        suffix = path.suffix.lower()
        meta = {".png": {"Software": None}, ".pdf": {"CreationDate": None}, ".svg": {"Date": None}}
        path.parent.mkdir(parents=True, exist_ok=True)
        with plt.rc_context(RC):
            fig.savefig(path, dpi=FORMATS[suffix] or "figure", metadata=meta[suffix])
    finally:
        plt.close(fig)
    return path
