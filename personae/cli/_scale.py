"""`personae merge`: shard databases of one plan into one run database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personae.cli._app import app, err, out


@app.command()
def merge(
    out_db: Annotated[Path, typer.Argument(metavar="OUT.db", help="Database to merge into.")],
    shards: Annotated[
        list[Path], typer.Argument(metavar="SHARD.db...", help="Shard databases to merge.")
    ],
) -> None:
    """Merge shard databases (from `personae run --shard K/N`) into OUT.db.

    Safe to rerun: episodes already in OUT.db are skipped, unfinished ones replaced by complete
    ones. An episode complete in two databases with different turns is a conflict: reported,
    OUT.db's version kept, exit code 1. OUT.db passes PRAGMA integrity_check afterwards.
    """
    from personae.store import merge_databases

    report = merge_databases(out_db, shards)
    for shard in report.shards:
        out.print(shard.line(), markup=False)
    for conflict in report.conflicts:
        err.print(conflict.line(report.out), markup=False)
    out.print(report.line(), markup=False)
    if report.conflicts:
        raise typer.Exit(1)
