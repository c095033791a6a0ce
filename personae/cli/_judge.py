"""`personae judge DB JUDGE.yaml`: add a judge's verdicts to a finished run database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personae.cli._app import (
    Imports,
    OnlyScenario,
    OnlyStatus,
    OnlyWhere,
    TrustBackend,
    app,
    err,
    load_user_code,
    out,
)


@app.command()
def judge(
    db: Annotated[Path, typer.Argument(help="A run database.")],
    spec: Annotated[Path, typer.Argument(help="A judge file (YAML).")],
    backend: Annotated[
        str | None, typer.Option(help="Backend spec for the judge (default: the file's).")
    ] = None,
    scenario: OnlyScenario = None,
    status: OnlyStatus = "complete",
    where: OnlyWhere = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    trust_backend: TrustBackend = False,
    imports: Imports = None,
) -> None:
    """Rate the episodes of a finished run with a judge: verdicts go into `judgments`.

    The judge sees what a live observer would see and answers with the same bounded structured
    output. Judging again with the same judge name replaces its earlier verdicts.
    """
    from personae.export import EpisodeFilter
    from personae.replay import judge_database, load_judge_spec
    from personae.store import check_database

    load_user_code(imports)
    check_database(db)
    judge_spec = load_judge_spec(spec)
    chosen = EpisodeFilter(scenario=scenario, status=status, where=tuple(where or ()))
    result = judge_database(
        db,
        judge_spec,
        backend=backend,
        chosen=chosen,
        progress=not quiet,
        trust_backend=trust_backend,
        notify=lambda line: err.print(line, markup=False),
    )
    out.print(result.line(), markup=False)
