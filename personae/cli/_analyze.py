"""`personae analyze …`: analyses of finished run databases (`personae.analysis`).

`personae analyze discussion DB` prints the facilitated-discussion study's main tables and writes
every table (CSV, the ratings also as Parquet), the regression summary, the notes and the figures
(PNG and PDF) into `--out` (default `<DB stem>_analysis/` next to the database). Bad input is a
`UserError` (one line, exit 2) raised before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from personae.cli._app import Imports, app, err, load_user_code, out
from personae.cli._experiment import _print_table

if TYPE_CHECKING:
    import pandas as pd

    from personae.analysis import DiscussionAnalysis

analyze = typer.Typer(
    name="analyze",
    help="Analyses of finished run databases (the facilitated-discussion study).",
    no_args_is_help=True,
)
app.add_typer(analyze)


def _number(value: Any, digits: int = 2) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _with_ci(name: str, digits: int = 2) -> Callable[[Any], str]:
    def show(row: Any) -> str:
        mean, low, high = row[name], row[f"{name}_low"], row[f"{name}_high"]
        if isinstance(mean, float) and math.isnan(mean):
            return "-"
        return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    return show


def _column(name: str, digits: int = 2) -> Callable[[Any], str]:
    return lambda row: _number(row[name], digits)


#: Columns of names, not numbers (left-aligned).
_NAMES = {
    "strategy",
    "intent",
    "term",
    "dimension",
    "least agreeing pair",
    "model",
    "pattern",
    "prompting",
}


def _table(title: str, frame: pd.DataFrame, columns: dict[str, Callable[[Any], str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for header in columns:
        table.add_column(header, justify="left" if header in _NAMES else "right")
    for _, row in frame.iterrows():
        table.add_row(*(escape(show(row)) for show in columns.values()))
    return table


def _agreement_rows(agreement: pd.DataFrame) -> pd.DataFrame:
    """The all-annotator rows, each with its dimension's least agreeing pair."""
    rows = agreement[agreement["annotators"] == "all"].copy()
    pairs = agreement[agreement["annotators"] != "all"].dropna(subset=["alpha"])
    least = []
    for dim in rows["dimension"]:
        mine = pairs[pairs["dimension"] == dim]
        worst = mine.loc[mine["alpha"].idxmin()] if not mine.empty else None
        least.append("-" if worst is None else f"{worst['annotators']} ({worst['alpha']:.3f})")
    rows["least"] = least
    return rows


def _print_analysis(result: DiscussionAnalysis) -> None:
    _print_table(_table("per strategy (95% bootstrap CI over discussions)", result.strategies, {
        "strategy": _column("strategy"),
        "discussions": _column("discussions"),
        "comments": _column("comments"),
        "invalid ratings": _column("invalid_ratings"),
        "toxicity": _with_ci("toxicity"),
        "argument quality": _with_ci("argument_quality"),
        "intervention rate": _column("intervention_rate"),
        "baseline toxicity": _column("baseline_toxicity", 3),
    }))  # fmt: skip
    participation = result.participation.merge(result.trolls, on="strategy", how="left")
    _print_table(_table("participation", participation, {
        "strategy": _column("strategy"),
        "comments per participant": _column("comments_per_participant"),
        "Gini": _with_ci("gini"),
        "troll toxicity": _column("troll_toxicity"),
        "others' toxicity": _column("other_toxicity"),
    }))  # fmt: skip
    _print_table(_table("comments per intent", result.intents, {
        "strategy": _column("strategy"),
        "intent": _column("intent"),
        "participants": _column("participants"),
        "comments": _column("comments"),
        "per participant": _column("comments_per_participant"),
        "toxicity": _column("toxicity"),
    }))  # fmt: skip
    _print_table(_table("diversity (1 - mean pairwise ROUGE-L F1)", result.diversity, {
        "strategy": _column("strategy"),
        "discussions": _column("discussions"),
        "diversity": _with_ci("diversity", 3),
        "JSD vs reference": _column("jsd", 3),
    }))  # fmt: skip
    if not result.regression.empty:
        fixed = result.regression.dropna(subset=["std_err"])
        _print_table(_table("mixed model: toxicity ~ strategy x turn (random intercept per "
                            "discussion)", fixed, {
            "term": _column("label"),
            "coef": _column("coef", 3),
            "95% CI": lambda r: f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            "p": _column("p_value", 4),
        }))  # fmt: skip
    _print_table(_table("annotator agreement (ordinal Krippendorff's alpha)",
                        _agreement_rows(result.agreement), {
        "dimension": _column("dimension"),
        "alpha": _column("alpha", 3),
        "comments": _column("units"),
        "least agreeing pair": _column("least"),
    }))  # fmt: skip
    for note in result.notes:
        out.print(f"note: {note}", markup=False)


@analyze.command()
def discussion(
    db: Annotated[Path, typer.Argument(help="A database written by a discussion scenario.")],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", metavar="DIR", help="Folder for the files (default <DB stem>_analysis/)."
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE.jsonl",
            help='Human conversations, one a line: {"id": ..., "comments": [...]}; the JSD of '
            "the diversity distributions is computed against them.",
        ),
    ] = None,
    run: Annotated[
        str | None, typer.Option(metavar="RUN_ID", help="Only this run (default: all runs).")
    ] = None,
    n_resamples: Annotated[
        int, typer.Option(min=100, help="Bootstrap resamples per confidence interval.")
    ] = 2000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the bootstrap.")] = 0,
    imports: Imports = None,
) -> None:
    """Analyse a facilitated-discussion run: toxicity and argument quality per strategy,
    participation, diversity, a mixed-effects regression and annotator agreement.

    Prints the main tables and writes every table (CSV; the ratings also as Parquet), the
    regression summary, notes and figures (PNG and PDF) into --out.
    """
    from personae.analysis import analyze_discussion, save_analysis
    from personae.analysis._save import check_folder

    load_user_code(imports)
    folder = out_dir if out_dir is not None else db.with_name(f"{db.stem}_analysis")
    check_folder(folder)
    result = analyze_discussion(
        db,
        run_id=run,
        reference=reference,
        n_resamples=n_resamples,
        seed=seed,
        progress=lambda line: err.print(f"[dim]{escape(line)}[/]"),
    )
    _print_analysis(result)
    written = save_analysis(result, folder)
    out.print(f"wrote {len(written)} files to {folder}", markup=False)
