"""`personae export` (sft, dpo, jsonl, csv, parquet) and `personae browse` (datasette on
127.0.0.1).

Exports write to `--out PATH` or stdout (Parquet, a binary file, needs `--out`); the count goes
to stderr so stdout stays clean data. The flat formats export `--table turns` (one row per turn;
JSONL nests the `*_json` columns), `--table interventions` (a teaching run's decisions) or
`--table env_steps` (a computer-use run's steps).
`--out` never names the run database or its `-wal`/`-shm`/`-journal` files (compared after
resolving symlinks, and by inode), a directory or a special file, nor an existing file unless
`--force` is given. The export is written to a temporary file next to the target and renamed
over it only when complete, so a failed export leaves no file behind and never half a file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from personae.cli._app import (
    Imports,
    OnlyScenario,
    OnlyStatus,
    OnlyWhere,
    app,
    err,
    load_user_code,
)
from personae.errors import UserError


@app.command()
def export(
    db: Annotated[Path, typer.Argument(help="A run database.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="sft (chat JSONL for TRL/axolotl), dpo (preference pairs), jsonl, csv or "
            "parquet (one row per turn or decision, for analysis).",
        ),
    ] = "jsonl",
    table: Annotated[
        str,
        typer.Option(
            help="jsonl/csv/parquet: turns, interventions (a teaching run's decisions) or "
            "env_steps (a computer-use run's steps)."
        ),
    ] = "turns",
    role: Annotated[
        str | None, typer.Option(help="sft/dpo: the role whose own view is exported.")
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: stdout).")
    ] = None,
    scenario: OnlyScenario = None,
    status: OnlyStatus = "complete",
    where: OnlyWhere = None,
    score_key: Annotated[
        str,
        typer.Option(
            help="dpo: 'score' (a judgment's mean score) or a dimension of the judges' verdicts."
        ),
    ] = "score",
    judge: Annotated[
        str | None, typer.Option(help="dpo: only this judge's verdicts (default: all judges).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --out file.")
    ] = False,
    imports: Imports = None,
) -> None:
    """Export episodes as training data (sft, dpo) or flat tables (jsonl, csv, parquet).

    sft and dpo hold only what the exported agent could see (its audience); dpo ranks sibling
    forks by the judges' verdicts in the judgments table, and pairs a supervisor's chosen
    candidate with each rejected one. The flat tables hold every turn (hidden state included)
    or, with --table interventions, a teaching run's decisions, or with --table env_steps, a
    computer-use run's steps.
    """
    load_user_code(imports)
    from personae.export import (
        EpisodeFilter,
        dpo_pairs,
        env_step_rows,
        intervention_rows,
        nested,
        sft_conversations,
        turn_rows,
        write_csv,
        write_jsonl,
        write_parquet,
    )

    formats = ("sft", "dpo", "jsonl", "csv", "parquet")
    if fmt not in formats:
        raise UserError(
            f"unknown export format {fmt!r}", where="--format", fix=f"use one of: {formats}"
        )
    tables = ("turns", "interventions", "env_steps")
    if table not in tables:
        raise UserError(
            f"unknown table {table!r}", where="--table", fix=f"use one of: {', '.join(tables)}"
        )
    if table != "turns" and fmt in ("sft", "dpo"):
        raise UserError(
            f"--format {fmt} exports conversations, not --table {table}",
            where="--table",
            fix=f"use --format jsonl, csv or parquet for the {table} table",
        )
    if fmt in ("sft", "dpo") and not role:
        raise UserError(
            f"--format {fmt} needs --role",
            where="personae export",
            fix="pass the role whose view to export, e.g. --role client",
        )
    from personae.store import check_database

    check_database(db)
    target = None if out_path is None or str(out_path) == "-" else out_path.expanduser()
    if target is None and fmt == "parquet":
        raise UserError(
            "--format parquet writes a binary file, not to stdout",
            where="--out",
            fix="name the file, e.g. --out turns.parquet",
        )
    if target is not None:
        check_out_path(target, db, force=force)
    chosen = EpisodeFilter(scenario=scenario, status=status, where=tuple(where or ()))
    shown = str(target) if target else "stdout"
    note = None
    with _written(target) as dest:
        if fmt == "sft":
            assert role is not None
            n = write_jsonl(sft_conversations(db, role, chosen), dest)
            message = f"{n} conversations ({role}'s view) → {shown}"
        elif fmt == "dpo":
            assert role is not None
            result = dpo_pairs(db, role, chosen, score_key=score_key, judge=judge)
            n = write_jsonl(result.pairs, dest)
            among = (
                f" and {result.candidate_turns} candidate turns" if result.candidate_turns else ""
            )
            message = (
                f"{n} preference pairs from {result.groups} sibling-fork groups{among} → {shown}"
            )
            if result.unscored:
                note = (
                    f"note: {result.unscored} groups had fewer than two siblings with a "
                    f"{score_key!r} score from a judge; without scores no pairs are made "
                    "(add verdicts with 'personae judge DB JUDGE.yaml')"
                )
        else:
            read = {"turns": turn_rows, "interventions": intervention_rows}
            rows = read.get(table, env_step_rows)(db, chosen)
            if fmt == "jsonl":
                n = write_jsonl(nested(rows), dest)
            elif fmt == "csv":
                n = write_csv(rows, dest)
            else:
                assert dest is not None
                n = write_parquet(rows, dest)
            noun = {"turns": "turns", "interventions": "decisions", "env_steps": "steps"}[table]
            message = f"{n} {noun} → {shown}"
    err.print(message, markup=False)
    if note:
        err.print(note, markup=False)


def _database_files(db: Path) -> list[Path]:
    """The database and the files SQLite keeps beside it, under every spelling of its path."""
    spellings = {db.absolute(), db.resolve()}
    return [
        Path(f"{base}{suffix}") for base in spellings for suffix in ("", "-wal", "-shm", "-journal")
    ]


def check_out_path(target: Path, db: Path, *, force: bool) -> None:
    """Refuse an export target that would damage the database or overwrite a file unasked.

    Raises:
        UserError: `target` is the database or one of its side files (whatever `force` says),
            a directory, not a regular file, inside something that is not a writable
            directory, or an existing file without `force`.
    """
    resolved = target.resolve()
    protected = _database_files(db)
    same = resolved in protected
    if not same and target.exists():
        with contextlib.suppress(OSError):
            same = any(p.exists() and os.path.samefile(target, p) for p in protected)
    if same:
        raise UserError(
            "--out would overwrite the run database (or its -wal/-shm file)",
            where=f"--out {target}",
            fix="write the export to another file, e.g. --out export.jsonl",
        )
    if resolved.is_dir():
        raise UserError(
            "--out is a directory",
            where=f"--out {target}",
            fix=f"name a file inside it, e.g. --out {target / 'export.jsonl'}",
        )
    if resolved.exists() and not resolved.is_file():
        raise UserError(
            "--out is not a regular file",
            where=f"--out {target}",
            fix="name a regular file, or leave out --out to write to stdout",
        )
    if (target.exists() or target.is_symlink()) and not force:
        raise UserError(
            "--out names an existing file",
            where=f"--out {target}",
            fix="pass --force to overwrite it, or choose another --out",
        )
    folder = next((p for p in resolved.parents if p.exists()), None)
    if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            "cannot write --out there: "
            + ("not a directory" if folder is not None and not folder.is_dir() else "not writable"),
            where=f"--out {target}",
            fix="choose a file in a folder you can write to",
        )


@contextlib.contextmanager
def _written(target: Path | None) -> Iterator[Path | None]:
    """Yield where to write (None: stdout); on success move it onto `target`, on failure
    remove it and any folders made for it."""
    if target is None:
        yield None
        return
    final = target.resolve()
    made = [p for p in reversed(final.parents) if not p.exists()]
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_folders(made)
        raise UserError(
            f"cannot create the folder for --out: {exc.strerror or exc}",
            where=f"--out {target}",
            fix="choose a file in a folder you can write to",
        ) from None
    partial = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield partial
        os.replace(partial, final)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        _remove_folders(made)
        raise


def _remove_folders(made: list[Path]) -> None:
    for folder in reversed(made):  # deepest first; a folder someone else filled stays
        with contextlib.suppress(OSError):
            folder.rmdir()


@app.command()
def browse(
    db: Annotated[Path, typer.Argument(help="A run database.")],
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")
    ] = 8001,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open a web browser at the database.")
    ] = False,
    imports: Imports = None,
) -> None:
    """Browse a database in datasette on 127.0.0.1, with full-text search over utterances."""
    from personae.export import browse as serve

    load_user_code(imports)
    serve(
        db,
        port=port,
        open_browser=open_browser,
        announce=lambda line: err.print(line, markup=False),
    )
