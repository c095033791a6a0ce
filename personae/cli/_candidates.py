"""`personae analyze candidates DB`: how each candidate fared when a supervisor chose among them.

Prints, per agent with candidates, how often each candidate was offered and chosen and its Elo
rating over every choice (in run, episode and turn order), then the session ratings (`when:
end` judges) of the same episodes; `--json` prints the same as JSON. It only reads the database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from personae.cli._app import Imports, OnlyScenario, OnlyStatus, OnlyWhere, app, load_user_code, out
from personae.cli._experiment import _print_table


def _analyze_group() -> typer.Typer:
    """The `personae analyze` command group (made here unless another module made it)."""
    for group in app.registered_groups:
        sub = group.typer_instance
        if sub is not None and sub.info.name == "analyze":
            return sub
    analyze = typer.Typer(
        name="analyze", help="Analyses of finished run databases.", no_args_is_help=True
    )
    app.add_typer(analyze)
    return analyze


@_analyze_group().command("candidates")
def candidates(
    db: Annotated[Path, typer.Argument(help="A run database.")],
    scenario: OnlyScenario = None,
    status: OnlyStatus = "complete",
    where: OnlyWhere = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    imports: Imports = None,
) -> None:
    """Selection counts and Elo ratings of candidates (each choice: the chosen candidate beats
    every rejected one; K 16, start 1000), and the session ratings of the same episodes."""
    from personae.export import EpisodeFilter, candidate_report

    load_user_code(imports)
    chosen = EpisodeFilter(scenario=scenario, status=status, where=tuple(where or ()))
    report = candidate_report(db, chosen)
    if as_json:
        out.print(json.dumps(report.as_json(), indent=2), markup=False)
        return
    table = Table(title="candidates (valid choices)", title_justify="left")
    for column in ("agent", "candidate", "offered", "chosen", "share", "Elo"):
        table.add_column(column, justify="left" if column in ("agent", "candidate") else "right")
    for s in sorted(report.candidates, key=lambda s: (s.agent, -s.elo)):
        table.add_row(escape(s.agent), escape(s.candidate), str(s.offered), str(s.chosen),
                      f"{s.share:.0%}", f"{s.elo:.1f}")  # fmt: skip
    _print_table(table)
    if report.sessions:
        sessions = Table(title="session ratings", title_justify="left")
        for column in ("judge", "rubric", "episodes", "valid", "score", "dimensions (mean)"):
            sessions.add_column(
                column, justify="right" if column in ("episodes", "valid", "score") else "left"
            )
        for r in report.sessions:
            dims = ", ".join(f"{k} {v:.2f}" for k, v in r.dimensions.items())
            score = f"{r.score:.2f}" if r.score is not None else "-"
            sessions.add_row(escape(r.judge), escape(r.rubric), str(r.episodes), str(r.valid),
                             score, escape(dims))  # fmt: skip
        _print_table(sessions)
    invalid = f" ({report.invalid} without a valid choice: not counted)" if report.invalid else ""
    out.print(f"{len(report.choices)} choices in {report.episodes} episodes{invalid}")
