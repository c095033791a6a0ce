"""`personae experiment computer-use …`: the computer-use experiment over the Python API.

`computer-use SCENARIO [run options]` runs the scenario through the one runner (as `personae
run` does; rerunning into the same --db, or --resume DB, resumes it) and prints the report;
`computer-use report DB` prints the report of a finished run, with `--plot` (grouped bars,
.png at 300 dpi, .pdf or .svg) and `--csv` (the rates and end reasons per group, and the
agreement next to it); `computer-use label DB FILE.csv` imports people's labels. Bad input is a
`UserError` (one line, exit 2, nothing written).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from personae.cli._analyze import _column, _table, _with_ci
from personae.cli._app import (
    BackendSpec,
    Cache,
    Concurrency,
    Episodes,
    Imports,
    Quiet,
    Repeats,
    Resume,
    RunDb,
    RunSeed,
    Settings,
    TrustBackend,
    exit_if_failed,
    out,
    start_run,
)
from personae.cli._experiment import Plot, _print_table, _RunByDefault, experiment
from personae.errors import UserError

if TYPE_CHECKING:
    from personae.analysis import ComputerUseReport

computer_use_app = typer.Typer(
    name="computer-use",
    cls=_RunByDefault,
    help="Computer-use experiments (blind goal-directedness): run one (the default), report on "
    "a finished run's database, or import people's labels.",
    no_args_is_help=True,
)
experiment.add_typer(computer_use_app)

#: `--csv FILE`, on the run and on the report.
Csv = Annotated[
    Path | None,
    typer.Option(
        "--csv",
        metavar="FILE",
        help="Write the rates and end reasons per group here (and the agreement to "
        "FILE_agreement.csv).",
    ),
]
Resamples = Annotated[
    int, typer.Option(min=100, help="Bootstrap resamples per confidence interval.")
]
BootSeed = Annotated[int, typer.Option("--bootstrap-seed", min=0, help="Seed of the bootstrap.")]
Judge = Annotated[
    str | None, typer.Option(help="Only this judge's bgd verdicts (default: every judge's).")
]


def _check_outputs(plot: Path | None, csv: Path | None) -> None:
    """Refuse output paths that cannot be written, before anything runs or is read."""
    from personae.experiments._plot import check_plot_path

    if plot is not None:
        check_plot_path(plot)
    if csv is None:
        return
    if csv.is_dir():
        raise UserError("a folder, not a file", where=f"--csv {csv}", fix="pass a file path")
    for part in csv.parents:
        if part.exists() and not part.is_dir():
            raise UserError(f"{part} is a file, not a folder", where=f"--csv {csv}")


def _agreement_path(csv: Path) -> Path:
    return csv.with_name(f"{csv.stem}_agreement{csv.suffix or '.csv'}")


def _rate(value: Any) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.2f}")
    )


def _agreement_line(rows: Any) -> str:
    """`comparison: agreement A (kappa K) over N pairs; per pattern: ...` for one comparison."""
    first = rows.iloc[0]
    head = (
        f"{first['comparison']}: agreement {_rate(first['agreement'])} "
        f"(kappa {_rate(first['kappa'])}) over {first['pairs']} pairs"
    )
    parts = [
        f"{r['pattern']} {_rate(r['agreement'])} (kappa {_rate(r['kappa'])}, n={r['pairs']})"
        for _, r in rows.iloc[1:].iterrows()
    ]
    return head + ("; per pattern: " + ", ".join(parts) if parts else "")


def print_report(report: ComputerUseReport) -> None:
    """The rates table (with the model column when there are several models), the end reasons,
    the agreement lines and the notes."""
    many = len(report.models) > 1
    columns: dict[str, Any] = {"model": _column("model")} if many else {}
    columns |= {
        "pattern": _column("pattern"),
        "prompting": _column("prompting"),
        "episodes": _column("episodes"),
        "judged": _column("judged"),
        "invalid": _column("invalid"),
        "missing": _column("missing"),
        "BGD rate": _with_ci("bgd"),
        "completion rate": _with_ci("completion"),
        "checks hit": _column("check_hit"),
        "steps": _column("steps", 1),
    }
    title = (
        "computer use: BGD and completion rates (lower is better; 95% bootstrap CI over episodes)"
    )
    _print_table(_table(title, report.rates, columns))
    ends = [c for c in report.ends.columns if c not in ("model", "pattern", "prompting")]
    end_columns = {k: v for k, v in columns.items() if k in ("model", "pattern", "prompting")}
    end_columns |= {e: _column(e) for e in ends}
    _print_table(_table("end reasons (episodes)", report.ends, end_columns))
    for _, rows in report.agreement.groupby("comparison", sort=False):
        out.print(_agreement_line(rows), markup=False)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)


def _report(
    db: Path,
    *,
    run_id: str | None,
    judge: str | None,
    n_resamples: int,
    seed: int,
    plot: Path | None,
    csv: Path | None,
) -> None:
    from personae.analysis import analyze_computer_use, save_computer_use_plot

    report = analyze_computer_use(
        db, run_id=run_id, judge=judge, n_resamples=n_resamples, seed=seed
    )
    print_report(report)
    if plot is not None:
        out.print(f"plot: {save_computer_use_plot(report, plot)}", markup=False)
    if csv is not None:
        table = report.rates.merge(
            report.ends, on=["model", "pattern", "prompting"], how="left"
        ).rename(columns={e: f"end_{e}" for e in report.ends.columns[3:]})
        try:
            csv.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(csv, index=False)
            report.agreement.to_csv(_agreement_path(csv), index=False)
        except OSError as exc:
            raise UserError(
                f"cannot write the CSV file ({exc.strerror})",
                where=f"--csv {csv}",
                fix="pass a path in a writable folder",
            ) from exc
        out.print(f"csv: {csv}, {_agreement_path(csv)}", markup=False)


@computer_use_app.command("run")
def run(
    scenario: Annotated[
        str | None, typer.Argument(help="Computer-use scenario YAML file, or a shipped name.")
    ] = None,
    episodes: Episodes = None,
    repeats: Repeats = None,
    settings: Settings = None,
    backend: BackendSpec = None,
    db: RunDb = None,
    seed: RunSeed = None,
    concurrency: Concurrency = None,
    resume: Resume = None,
    cache: Cache = False,
    quiet: Quiet = False,
    plot: Plot = None,
    csv: Csv = None,
    judge: Judge = None,
    n_resamples: Resamples = 2000,
    bootstrap_seed: BootSeed = 0,
    trust_backend: TrustBackend = False,
    imports: Imports = None,
) -> None:
    """Run a computer-use scenario through the runner, then print its report.

    Rerunning into the same --db, or --resume DB, skips complete episodes; the report covers
    every computer-use episode in the database. Exits 1 when some episodes failed (after the
    report of the others).
    """
    from personae.seeds import parse_seed

    _check_outputs(plot, csv)
    result = start_run(
        scenario,
        imports=imports,
        quiet=quiet,
        episodes=episodes,
        repeats=repeats,
        settings=settings or (),
        backend=backend,
        db=db,
        seed=parse_seed(seed, "--seed") if seed is not None else None,
        concurrency=concurrency,
        resume=resume,
        cache=cache,
        trust_backend=trust_backend,
    )
    out.print(result.line(), markup=False)
    if result.complete or result.skipped:
        _report(
            result.db_path,
            run_id=None,
            judge=judge,
            n_resamples=n_resamples,
            seed=bootstrap_seed,
            plot=plot,
            csv=csv,
        )
    exit_if_failed(result)


@computer_use_app.command("report")
def report(
    db: Annotated[Path, typer.Argument(help="A computer-use run's database.")],
    plot: Plot = None,
    csv: Csv = None,
    run_id: Annotated[
        str | None, typer.Option("--run", metavar="RUN_ID", help="Only this run (default: all).")
    ] = None,
    judge: Judge = None,
    n_resamples: Resamples = 2000,
    bootstrap_seed: BootSeed = 0,
    imports: Imports = None,
) -> None:
    """Print a finished computer-use run's report: BGD and completion rates per pattern and
    prompting condition (and model), end reasons, and the judge's agreement with the state
    checks and with people's labels."""
    from personae.cli._app import load_user_code

    load_user_code(imports)
    _check_outputs(plot, csv)
    _report(
        db,
        run_id=run_id,
        judge=judge,
        n_resamples=n_resamples,
        seed=bootstrap_seed,
        plot=plot,
        csv=csv,
    )


@computer_use_app.command("label")
def label(
    db: Annotated[Path, typer.Argument(help="A computer-use run's database.")],
    labels: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.csv",
            help="Columns episode_id,annotator,bgd,completion[,note]; values 0/1/true/false.",
        ),
    ],
) -> None:
    """Import people's labels of episodes into the database (`human_labels`); importing the
    same file again changes nothing, a corrected one replaces those labels."""
    from personae.store import import_labels

    result = import_labels(db, labels)
    out.print(result.line(), markup=False)
