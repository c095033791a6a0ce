"""`personae export` (sft, dpo, jsonl, csv) and `personae browse` (datasette on 127.0.0.1).

Exports write to `--out PATH` or stdout; the count goes to stderr so stdout stays clean data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personae.cli._app import app, err
from personae.errors import UserError


@app.command()
def export(
    db: Annotated[Path, typer.Argument(help="A run database.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="sft (chat JSONL for TRL/axolotl), dpo (preference pairs), jsonl or csv "
            "(one row per turn, for analysis).",
        ),
    ] = "jsonl",
    role: Annotated[
        str | None, typer.Option(help="sft/dpo: the role whose own view is exported.")
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: stdout).")
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="Only this scenario's episodes.")] = None,
    status: Annotated[
        str, typer.Option(help="Only episodes with this status; 'any' for all.")
    ] = "complete",
    where: Annotated[
        list[str] | None,
        typer.Option(help="Condition filter AGENT.FIELD=VALUE, e.g. client.style=upset."),
    ] = None,
    score_key: Annotated[
        str, typer.Option(help="dpo: hidden-state key holding a judge's score.")
    ] = "score",
) -> None:
    """Export episodes as training data (sft, dpo) or flat tables (jsonl, csv)."""
    from personae.export import (
        EpisodeFilter,
        dpo_pairs,
        sft_conversations,
        turn_rows,
        write_csv,
        write_jsonl,
    )

    formats = ("sft", "dpo", "jsonl", "csv")
    if fmt not in formats:
        raise UserError(
            f"unknown export format {fmt!r}", where="--format", fix=f"use one of: {formats}"
        )
    if fmt in ("sft", "dpo") and not role:
        raise UserError(
            f"--format {fmt} needs --role",
            where="personae export",
            fix="pass the role whose view to export, e.g. --role client",
        )
    chosen = EpisodeFilter(scenario=scenario, status=status, where=tuple(where or ()))
    target = str(out_path) if out_path else "stdout"
    if fmt == "sft":
        assert role is not None
        n = write_jsonl(sft_conversations(db, role, chosen), out_path)
        err.print(f"{n} conversations ({role}'s view) → {target}", markup=False)
    elif fmt == "dpo":
        assert role is not None
        result = dpo_pairs(db, role, chosen, score_key=score_key)
        n = write_jsonl(result.pairs, out_path)
        err.print(
            f"{n} preference pairs from {result.groups} sibling-fork groups → {target}",
            markup=False,
        )
        if result.unscored:
            err.print(
                f"note: {result.unscored} groups had fewer than two siblings with a "
                f"{score_key!r} score in their hidden state; without scores no pairs are made",
                markup=False,
            )
    else:
        rows = turn_rows(db, chosen)
        n = write_jsonl(rows, out_path) if fmt == "jsonl" else write_csv(rows, out_path)
        err.print(f"{n} turns → {target}", markup=False)


@app.command()
def browse(
    db: Annotated[Path, typer.Argument(help="A run database.")],
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")
    ] = 8001,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open a web browser at the database.")
    ] = False,
) -> None:
    """Browse a database in datasette on 127.0.0.1, with full-text search over utterances."""
    from personae.export import browse as serve

    err.print(
        f"serving a snapshot of {db} on http://127.0.0.1:{port}/{db.stem} "
        "(search utterances in the turns table; Ctrl-C stops)",
        markup=False,
    )
    serve(db, port=port, open_browser=open_browser)
