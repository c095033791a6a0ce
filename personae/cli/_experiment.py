"""`personae experiment …`: experiment sweeps over the Python API (`personae.experiments`).

`personae experiment teaching SCENARIO` runs a teacher-student budget experiment, prints the
accuracy-vs-budget table per intervention function (and the multi-turn table), and with `--plot`
saves the curves as a PNG. Bad input is a `UserError` (one line, exit 2, nothing written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from personae.cli._app import Imports, TrustBackend, app, err, out
from personae.errors import UserError
from personae.seeds import parse_seed

experiment = typer.Typer(
    name="experiment",
    help="Experiment sweeps (teacher-student budgets).",
    no_args_is_help=True,
)
app.add_typer(experiment)


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


@experiment.command()
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
    plot: Annotated[
        Path | None, typer.Option(help="Save the accuracy-vs-budget curves as a PNG here.")
    ] = None,
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
    from personae.experiments import run_teaching, save_plot

    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(
            f"unsupported plot format {plot.suffix or '(no suffix)'!r}",
            where="--plot",
            fix="use a .png (or .svg/.pdf) path",
        )
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
    _print_table(result.table())
    multi = result.multi_turn_table()
    if multi is not None:
        _print_table(multi)
    if plot is not None:
        out.print(f"plot: {save_plot(result.curves, plot, title=result.scenario)}")
    out.print(result.line())
