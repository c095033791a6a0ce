"""`personae experiment …`: experiment sweeps over the Python API (`personae.experiments`).

`personae experiment teaching SCENARIO` runs a teacher-student budget experiment, prints the
accuracy-vs-budget table per intervention function (and the multi-turn table), and with `--plot`
saves the figure (.png at 300 dpi, .pdf or .svg). `personae experiment teaching report DB`
prints the same tables (and figure) from a finished run's database, re-scored for other budgets,
functions or bootstrap settings without a model call. Bad input is a `UserError` (one line,
exit 2, nothing written).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from typer.core import TyperGroup

from personae.cli._app import Imports, TrustBackend, app, err, out
from personae.errors import UserError
from personae.seeds import parse_seed

if TYPE_CHECKING:
    from personae.experiments import TeachingResult

experiment = typer.Typer(
    name="experiment",
    help="Experiment sweeps (teacher-student budgets, computer use).",
    no_args_is_help=True,
)
app.add_typer(experiment)


class _RunByDefault(TyperGroup):
    """`teaching SCENARIO ...` is `teaching run SCENARIO ...`; `teaching report DB` reports.
    (A scenario file named like a subcommand is given as `./report`.)"""

    # `ctx` is typer's or click's Context, depending on the typer version
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


teaching_app = typer.Typer(
    name="teaching",
    cls=_RunByDefault,
    help="Teacher-student budget experiments: run one (the default), or report on a "
    "finished run's database.",
    no_args_is_help=True,
)
experiment.add_typer(teaching_app)


def parse_seeds(values: list[str] | None) -> list[int] | None:
    """Seeds from `--seeds 0,1,2` and/or repeated `--seeds N` (each in [0, 2**63))."""
    if not values:
        return None
    seeds = [
        parse_seed(part, "--seeds")
        for value in values
        for part in value.replace(" ", ",").split(",")
        if part
    ]
    return seeds or None


def _print_table(table: Table) -> None:
    """Print `table` unwrapped when output goes to a file or pipe (a terminal wraps it)."""
    if out.is_terminal:
        out.print(table)
        return
    natural = Measurement.get(out, out.options.update(max_width=1000), table).maximum
    Console(width=max(out.width, natural), highlight=False).print(table)


#: `--plot PATH`, on the run and on the report.
Plot = Annotated[
    Path | None,
    typer.Option(help="Save the figure here: .png (300 dpi), .pdf or .svg."),
]


def _print_result(result: TeachingResult, plot: Path | None) -> None:
    _print_table(result.table())
    multi = result.multi_turn_table()
    if multi is not None:
        _print_table(multi)
    if plot is not None:
        out.print(f"plot: {result.plot(plot)}", markup=False)


@teaching_app.command("run")
def teaching(
    scenario: Annotated[
        str, typer.Argument(help="Teaching scenario YAML file, or a shipped name.")
    ],
    db: Annotated[
        Path | None, typer.Option(help="Run database (default logs/<scenario>-<time>.db).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Backend spec for teacher and student, e.g. simulated.")
    ] = None,
    items: Annotated[int | None, typer.Option(min=1, help="Use the first N test items.")] = None,
    seeds: Annotated[
        list[str] | None, typer.Option(help="Seeds, e.g. --seeds 0,1,2 (default: the scenario's).")
    ] = None,
    plot: Plot = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Episodes in flight (default: the backend's).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    trust_backend: TrustBackend = False,
    imports: Imports = None,
) -> None:
    """Run a teacher-student budget experiment and print accuracy vs. budget.

    Rerunning into the same --db resumes it: complete episodes are kept, the rest run, and the
    tables come from all of them.
    """
    from personae.experiments import run_teaching
    from personae.experiments._plot import check_plot_path

    if plot is not None:
        check_plot_path(plot)
    result = run_teaching(
        scenario,
        db=db,
        backend=backend,
        items=items,
        seeds=parse_seeds(seeds),
        progress=not quiet,
        imports=imports or (),
        concurrency=concurrency,
        announce=lambda path: out.print(f"database: {path}", markup=False),
        trust_backend=trust_backend,
        notify=lambda line: err.print(line, markup=False),
    )
    _print_result(result, plot)
    out.print(result.line())


def _split(values: list[str] | None) -> list[str] | None:
    """`a,b` and repeated options as one list (None when not given)."""
    if values is None:
        return None
    return [part for value in values for part in value.replace(" ", ",").split(",") if part]


def parse_budgets(values: list[str] | None) -> list[float] | None:
    """Budgets from `--budgets 0,0.1,0.5` (fractions of the test items)."""
    parts = _split(values)
    if parts is None:
        return None
    budgets = []
    for part in parts:
        try:
            budgets.append(float(part))
        except ValueError:
            raise UserError(
                f"bad budget {part!r}: a budget is a fraction of the test items, 0 to 1",
                where="--budgets",
                fix="write e.g. --budgets 0,0.1,0.5,1",
            ) from None
    return budgets


@teaching_app.command("report")
def report(
    db: Annotated[Path, typer.Argument(help="A teaching run's database.")],
    plot: Plot = None,
    budgets: Annotated[
        list[str] | None,
        typer.Option(help="Budgets to score, e.g. --budgets 0,0.1,0.2 (default: the run's)."),
    ] = None,
    functions: Annotated[
        list[str] | None,
        typer.Option(
            help="Intervention functions, e.g. --functions random,oracle (default: the run's)."
        ),
    ] = None,
    n_resamples: Annotated[
        int | None, typer.Option(help="Bootstrap resamples (default: the run's).")
    ] = None,
    seed: Annotated[
        str | None, typer.Option(metavar="INT", help="Bootstrap seed (default: the run's).")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run", help="Which teaching run (default: the newest).")
    ] = None,
    imports: Imports = None,
) -> None:
    """Print a finished teaching run's tables again from its database, without model calls.

    Other budgets, intervention functions and bootstrap settings are re-scored from the stored
    per-item outcomes; a function or budget that would explain items the run never explained
    needs model calls, and is an error.
    """
    from personae.experiments import teaching_report
    from personae.experiments._plot import check_plot_path

    if plot is not None:
        check_plot_path(plot)
    result = teaching_report(
        db,
        run_id=run_id,
        budgets=parse_budgets(budgets),
        functions=_split(functions),
        resamples=n_resamples,
        bootstrap_seed=parse_seed(seed, "--seed") if seed is not None else None,
        imports=imports or (),
        notify=lambda line: err.print(line, markup=False),
    )
    _print_result(result, plot)
    out.print(f"report of run {result.run_id} in {result.db_path}: {result.line()}", markup=False)
