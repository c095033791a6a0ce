"""The `personae` command line: thin commands over the Python API.

User errors (`UserError`) print one line on stderr and exit with code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from personae.errors import UserError

app = typer.Typer(
    name="personae",
    help="Multi-agent role-play simulations with LLMs; every turn logged to SQLite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
def run(
    scenario: Annotated[
        str | None, typer.Argument(help="Scenario YAML file, or a shipped scenario name.")
    ] = None,
    episodes: Annotated[
        int | None, typer.Option(min=1, help="Run only the first N episodes.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Backend spec for every agent, e.g. embedded, scripted.")
    ] = None,
    db: Annotated[
        Path | None, typer.Option(help="Run database (default logs/<scenario>-<time>.db).")
    ] = None,
    seed: Annotated[
        str | None,
        typer.Option(metavar="INT", help="Run seed, 0 to 2**63-1 (default: the scenario's)."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Episodes in flight (default: the backend's).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    cache: Annotated[
        bool,
        typer.Option(
            help="Reuse replies to identical requests from response_cache.db next to the database."
        ),
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the newest run in this database (skips complete episodes)."),
    ] = None,
) -> None:
    """Run a scenario and log every turn to SQLite.

    Rerunning into the same --db, or --resume DB, skips complete episodes and restarts
    unfinished ones from turn 0.
    """
    from personae.runner import run as run_scenario
    from personae.seeds import parse_seed

    result = run_scenario(
        scenario,
        episodes=episodes,
        backend=backend,
        db=db,
        seed=parse_seed(seed, "--seed") if seed is not None else None,
        concurrency=concurrency,
        progress=not quiet,
        cache=cache,
        resume=resume,
    )
    out.print(f"database: {result.db_path}")
    out.print(result.line())


@app.command()
def show(
    db: Annotated[Path, typer.Argument(help="A run database.")],
    episode: Annotated[
        str | None, typer.Argument(help="Episode id (or unique prefix, or list index).")
    ] = None,
    hidden: Annotated[bool, typer.Option(help="Also print hidden per-turn state.")] = False,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(metavar="A B", help="Print two episodes (e.g. forks) side by side."),
    ] = None,
) -> None:
    """List a database's episodes, print one episode's transcript, or compare two."""
    from personae.store import RunLog

    with RunLog(db) as log:
        if compare is not None:
            from personae.cli._replay import compare_episodes

            compare_episodes(log, *compare)
        elif episode is None:
            _episode_table(log)
        else:
            _transcript(log, episode, hidden)


def _episode_table(log: object) -> None:
    from personae.store import RunLog

    assert isinstance(log, RunLog)
    episodes = log.episodes()
    names = sorted({e["scenario"] for e in episodes})
    table = Table(title=f"{log.path}  ({', '.join(names)})", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("episode", no_wrap=True)
    for col in ("condition", "status", "end", "turns"):
        table.add_column(col, overflow="fold")
    for i, e in enumerate(episodes):
        cond = json.loads(e["condition_json"] or "{}")
        status = e["status"]
        colour = {"complete": "green", "failed": "red"}.get(status, "yellow")
        table.add_row(
            str(i),
            e["episode_id"],
            _condition_text(cond),
            f"[{colour}]{status}[/]",
            e["end_reason"] or "",
            str(e["n_turns"] if e["n_turns"] is not None else ""),
        )
    out.print(table)
    s = log.summary()
    out.print(
        f"{s['episodes']} episodes ({s['complete'] or 0} complete, {s['failed'] or 0} failed), "
        f"{s['turns']} turns, {s['prompt_tokens'] + s['completion_tokens']} tokens"
    )


def _condition_text(condition: dict[str, object]) -> str:
    """An episode's condition as its values, e.g. 'cbt · margaret_grief · upset'."""
    values: list[str] = []
    for key, fields in condition.items():
        if isinstance(fields, dict):
            values.extend(str(v) for v in fields.values() if v is not None)
        elif key != "repeat":
            values.append(f"{key}={fields}")
    return " · ".join(values)


def _transcript(log: object, episode: str, hidden: bool) -> None:
    from personae.store import RunLog

    assert isinstance(log, RunLog)
    row = log.episode(episode)
    cond = _condition_text(row["condition"])
    out.rule(escape(f"{row['episode_id']}  {row['scenario']}  {cond}"))
    colours = ["cyan", "magenta", "green", "yellow"]
    palette: dict[str, str] = {}
    for turn in log.turns(row["episode_id"]):
        colour = palette.setdefault(turn.agent, colours[len(palette) % len(colours)])
        out.print(f"[bold {colour}]{escape(turn.agent)}[/]: {escape(turn.text)}")
        if hidden and turn.hidden:
            out.print(f"  [dim]hidden: {escape(json.dumps(turn.hidden))}[/]")
    out.rule(f"{row['status']} ({row['end_reason'] or '-'}), {row['n_turns']} turns")
    if row["error"]:
        out.print(f"[red]error: {escape(row['error'])}[/]")


@app.command()
def scenarios() -> None:
    """List shipped scenarios, registered roles and backend kinds."""
    import yaml

    from personae.agents import role_names
    from personae.backends import backend_kinds
    from personae.scenario import scenarios_dir, shipped_scenarios

    table = Table(title=f"scenarios in {scenarios_dir()}", title_justify="left")
    table.add_column("name")
    table.add_column("description", overflow="fold")
    for path in shipped_scenarios():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            data = {}
        table.add_row(path.stem, str(data.get("description", "")).strip())
    out.print(table)
    out.print(f"roles: {', '.join(role_names())}")
    out.print(f"backends: {', '.join(backend_kinds())}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning `UserError` into exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except UserError as exc:
        err.print(f"error: {exc.line()}", markup=False)
        sys.exit(2)
