"""The `personae` command line: thin commands over the Python API.

User errors (`UserError`) print one line on stderr and exit with code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from personae.errors import UserError
from personae.store._labels import condition_text as _condition_text
from personae.store._labels import speaker_text
from personae.store._labels import verdict_text as _verdict

if TYPE_CHECKING:
    from personae.runner import RunResult

#: `--import MODULE_OR_FILE`, repeatable, on every command: user code registering roles, graph
#: kinds, turn policies, judges, backends or intervention functions.
Imports = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        metavar="MODULE_OR_FILE",
        help="Import a Python file or module first (your own roles, graph kinds, turn "
        "policies, judges, backends); repeatable.",
    ),
]


#: `--trust-backend`: send credentials to endpoints a scenario file or database names.
TrustBackend = Annotated[
    bool,
    typer.Option(
        "--trust-backend",
        help="Send credentials (e.g. $OPENAI_API_KEY) to the endpoints the scenario file or "
        "database names (by default only a --backend given here gets them).",
    ),
]


#: The options `personae run` shares with the commands that run a scenario through it.
Episodes = Annotated[int | None, typer.Option(min=1, help="Run only the first N episodes.")]
Repeats = Annotated[
    int | None, typer.Option(min=1, help="Episodes per condition (default: the scenario's).")
]
Settings = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a scenario field by dotted path, e.g. graph.max_turns=4 or "
        "agents.helper.sampling.temperature=0.2 (YAML value); repeatable.",
    ),
]
BackendSpec = Annotated[
    str | None, typer.Option(help="Backend spec for every agent, e.g. embedded, scripted.")
]
RunDb = Annotated[
    Path | None, typer.Option(help="Run database (default logs/<scenario>-<time>.db).")
]
RunSeed = Annotated[
    str | None,
    typer.Option(metavar="INT", help="Run seed, 0 to 2**63-1 (default: the scenario's)."),
]
Concurrency = Annotated[
    int | None, typer.Option(min=1, help="Episodes in flight (default: the backend's).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Cache = Annotated[
    bool,
    typer.Option(
        help="Reuse replies to identical requests from response_cache.db next to the database."
    ),
]
Resume = Annotated[
    Path | None,
    typer.Option(help="Continue the newest run in this database (skips complete episodes)."),
]


#: Which episodes a command reads (export, judge): `--scenario`, `--status`, `--where`.
OnlyScenario = Annotated[str | None, typer.Option(help="Only this scenario's episodes.")]
OnlyStatus = Annotated[str, typer.Option(help="Only episodes with this status; 'any' for all.")]
OnlyWhere = Annotated[
    list[str] | None,
    typer.Option(help="Condition filter AGENT.FIELD=VALUE, e.g. client.style=upset."),
]


def load_user_code(imports: list[str] | None) -> None:
    """Import what `--import` names (one-line `UserError` when it fails)."""
    from personae.plugins import load_imports

    load_imports(imports or (), where="--import")


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
    episodes: Episodes = None,
    repeats: Repeats = None,
    settings: Settings = None,
    backend: BackendSpec = None,
    db: RunDb = None,
    seed: RunSeed = None,
    concurrency: Concurrency = None,
    quiet: Quiet = False,
    cache: Cache = False,
    resume: Resume = None,
    plan_limit: Annotated[
        int | None,
        typer.Option(min=1, help="Most turns a plan may hold (default 10,000,000)."),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            metavar="K/N",
            help="Run only shard K of N of the plan (e.g. $SLURM_ARRAY_TASK_ID/"
            "$SLURM_ARRAY_TASK_COUNT); combine the shard databases with 'personae merge'.",
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            metavar="local|ray",
            help="ray: split the plan into --workers shards, each run by a Ray actor, and "
            "merge their databases into --db (pip install 'personae[ray]').",
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster for --executor ray (HOST:PORT or auto; default: local)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Ray actors (shards) for --executor ray (default: the CPUs)."),
    ] = None,
    trust_backend: TrustBackend = False,
    imports: Imports = None,
) -> None:
    """Run a scenario and log every turn to SQLite.

    Rerunning into the same --db, or --resume DB (a run of any kind: a conversation scenario or
    a teaching experiment), skips complete episodes and restarts unfinished ones from turn 0.
    Exits 1 when some episodes failed (the run is recorded as partial or failed), 130 when
    interrupted (the resume command is printed).
    """
    from personae.seeds import parse_seed

    result = start_run(
        scenario,
        imports=imports,
        quiet=quiet,
        episodes=episodes,
        backend=backend,
        db=db,
        seed=parse_seed(seed, "--seed") if seed is not None else None,
        concurrency=concurrency,
        cache=cache,
        resume=resume,
        plan_limit=plan_limit,
        trust_backend=trust_backend,
        repeats=repeats,
        settings=settings or (),
        shard=shard,
        executor=executor,
        address=address,
        workers=workers,
    )
    out.print(result.line(), markup=False)
    exit_if_failed(result)


def start_run(
    scenario: str | None, *, imports: list[str] | None, quiet: bool, **options: Any
) -> RunResult:
    """Run `scenario` through the one runner (`personae.runner.run` with `options`) as
    `personae run` does: the database announced, a progress bar unless `quiet`, notes on
    stderr; interrupted, it says how to resume and exits 130."""
    from personae.runner import run as run_scenario

    load_user_code(imports)
    started: list[Path] = []

    def announce(path: Path) -> None:
        started.append(path)
        out.print(f"database: {path}", markup=False)

    try:
        return run_scenario(
            scenario,
            progress=not quiet,
            announce=announce,
            notify=lambda line: err.print(line, markup=False),
            **options,
        )
    except KeyboardInterrupt:
        if started:
            again = " --executor ray" if options.get("executor") == "ray" else ""
            err.print(
                f"interrupted: complete episodes are saved; resume with: "
                f"personae run --resume {started[0]}{again}",
                markup=False,
            )
        raise typer.Exit(130) from None


def exit_if_failed(result: RunResult) -> None:
    """Say how to see and retry failed episodes, and exit 1, if some of `result`'s failed."""
    if result.failed:
        err.print(
            f"{result.failed} of {result.episodes} episodes failed (run {result.status}); see "
            f"their errors with 'personae show {result.db_path}', retry them with "
            f"'personae run --resume {result.db_path}'",
            markup=False,
        )
        raise typer.Exit(1)


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
    view: Annotated[
        str | None,
        typer.Option("--as", metavar="AGENT", help="Only the lines AGENT could see."),
    ] = None,
    imports: Imports = None,
) -> None:
    """List a database's episodes, print one episode's transcript, or compare two.

    A transcript marks private lines with their audience, shows judges' verdicts under the line
    they rate, and with --hidden each turn's hidden state and turn-policy decision.
    """
    from personae.store import RunLog

    load_user_code(imports)
    with RunLog(db) as log:
        if compare is not None:
            from personae.cli._replay import compare_episodes

            compare_episodes(log, *compare)
        elif episode is None:
            _episode_table(log)
        else:
            _transcript(log, episode, hidden, view)


def _episode_table(log: object) -> None:
    from personae.store import RunLog

    assert isinstance(log, RunLog)
    episodes = log.episodes()
    names = sorted({e["scenario"] for e in episodes})
    table = Table(title=f"{log.path}  ({', '.join(names)})", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("episode", no_wrap=True)
    table.add_column("condition", overflow="fold", min_width=12)
    for col in ("status", "end", "turns"):  # single words: never split mid-word
        table.add_column(col, no_wrap=True)
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


def _transcript(log: object, episode: str, hidden: bool, view: str | None = None) -> None:
    from personae.store import RunLog

    assert isinstance(log, RunLog)
    row = log.episode(episode)
    turns = log.turns(row["episode_id"])
    if view is not None:
        agents = {t.agent for t in turns} | set(row["personas"])
        if view not in agents:
            raise UserError(
                f"no agent {view!r} in this episode",
                where="--as",
                fix=f"agents: {', '.join(sorted(agents))}",
            )
        turns = [t for t in turns if t.visible_to(view)]
    cond = _condition_text(row["condition"])
    seen = f"  (as {view} saw it)" if view else ""
    out.rule(escape(f"{row['episode_id']}  {row['scenario']}  {cond}{seen}"))
    colours = ["cyan", "magenta", "green", "yellow", "blue", "red"]
    palette: dict[str, str] = {}
    verdicts: dict[int | None, list[dict[str, object]]] = {}
    for j in log.judgments(row["episode_id"]):
        verdicts.setdefault(j["turn_idx"], []).append(j)
    width = _wrap_width()
    for turn in turns:
        colour = palette.setdefault(turn.agent, colours[len(palette) % len(colours)])
        who = f"[bold {colour}]{escape(speaker_text(turn.agent, row['personas']))}[/]"
        if turn.kind == "pass":
            _say(f"[dim]{who} passes[/]", width)
            if hidden and turn.decision:  # the policy chose the agent that abstained
                _say(f"[dim]turn policy: {escape(json.dumps(turn.decision))}[/]", width, 2)
            continue
        tag = {"seed": " [dim](seed)[/]", "feedback": " [dim](judge's feedback)[/]"}.get(
            turn.kind, ""
        )
        if turn.audience is not None:
            tag += f" [dim italic](privately, to {escape(', '.join(turn.audience))})[/]"
        _line(who, tag, escape(turn.text), width)
        if hidden and turn.hidden:
            _say(f"[dim]hidden: {escape(json.dumps(turn.hidden))}[/]", width, 2)
        if hidden and turn.decision:
            _say(f"[dim]turn policy: {escape(json.dumps(turn.decision))}[/]", width, 2)
        for j in verdicts.get(turn.idx, []) if view is None else []:
            _say(f"[dim]{escape(str(j['judge']))}: {escape(_verdict(j))}[/]", width, 2)
    for j in verdicts.get(None, []) if view is None else []:
        _say(f"[dim]{escape(str(j['judge']))} on the episode: {escape(_verdict(j))}[/]", width)
    passes = sum(t.kind == "pass" for t in turns)
    tail = f", {passes} passes" if passes else ""
    out.rule(f"{row['status']} ({row['end_reason'] or '-'}), {row['n_turns']} turns{tail}")
    if row["error"]:
        out.print(f"[red]error: {escape(row['error'])}[/]")


def _wrap_width() -> int | None:
    """The width transcripts wrap at: the terminal's (or `$COLUMNS`); None when printing to a
    file or pipe, where each line stays one line."""
    if out.is_terminal or os.environ.get("COLUMNS", "").strip().isdigit():
        return out.width
    return None


def _say(markup: str, width: int | None, indent: int = 0) -> None:
    """Print one line of markup, wrapped at word boundaries to `width` (None: unwrapped) with
    `indent` spaces before every line."""
    if width is None:
        out.print(" " * indent + markup)
        return
    _hang(Text(" " * indent), Text.from_markup(markup), width)


def _line(who: str, tag: str, text: str, width: int | None) -> None:
    """A speaker's line `who tag: text`; wrapped, the text hangs beside the speaker's name so
    names are never split and the lines of one turn stay together."""
    if width is None:
        out.print(f"{who}{tag}: {text}")
        return
    head = Text.from_markup(f"{who}{tag}: ")
    if head.cell_len > width // 2:  # a long name or audience: the text goes under it
        _hang(Text(), head, width)
        head = Text("  ")
    _hang(head, Text.from_markup(text), width)


def _hang(head: Text, body: Text, width: int) -> None:
    """`body` wrapped at word boundaries (a word wider than the space folds) to fit beside
    `head`, its later lines indented by the width of `head`; no trailing spaces."""
    lines = body.wrap(out, max(width - head.cell_len, 10), overflow="fold")
    for i, line in enumerate(lines):
        line.rstrip()
        prefix = head if i == 0 else Text(" " * head.cell_len)
        out.print(Text.assemble(prefix, line), soft_wrap=True)


@app.command()
def scenarios(imports: Imports = None) -> None:
    """List shipped scenarios and what a scenario can name: graph kinds (with their options),
    turn policies, roles, judges and backends (yours too, with --import)."""
    import yaml

    from personae._shipped import scenarios_dir
    from personae.agents import role_names
    from personae.backends._registry import BACKENDS
    from personae.graphs import GRAPHS, POLICIES
    from personae.judges import JUDGES
    from personae.scenario import shipped_scenarios

    load_user_code(imports)
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
    kinds = Table(title="graph kinds (graph: {kind: NAME, ...options})", title_justify="left")
    kinds.add_column("kind")
    kinds.add_column("what it is, and its options", overflow="fold")
    for name, doc in GRAPHS.describe():
        kind = GRAPHS.get(name)
        options = "; ".join(f"{k}: {d}" for k, d in kind.describe_options())
        kinds.add_row(name, f"{doc}\n[dim]{escape(options)}[/]")
    out.print(kinds)
    out.print(f"turn policies: {', '.join(POLICIES.names())}")
    out.print(f"roles: {', '.join(role_names())}")
    out.print(f"judges: {', '.join(JUDGES.names())}")
    out.print(f"backends: {', '.join(BACKENDS.names())}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning `UserError` into exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except UserError as exc:
        err.print(f"error: {exc.line()}", markup=False)
        sys.exit(2)
