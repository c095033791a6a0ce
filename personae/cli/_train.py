"""`personae train SCENARIO`: a person plays an agent (backend `human`) in the terminal; then
`personae ccd score DB`: score a cognitive model (CCD) against the client's profile.

The session runs through the one runner: each of the person's turns is an interrupt that this
UI answers (the client's lines, a turn counter and elapsed time shown, the line read from the
terminal, `--input FILE` or a pipe, one line per turn). `/pause` leaves the episode paused
(`personae train --resume DB` continues it); `/end` ends it, and the trainee then fills in the
CCD they inferred (or gives it with `--ccd FILE`), which is scored field by field.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from personae.cli._app import Imports, TrustBackend, app, err, load_user_code, out
from personae.errors import UserError

HELP = (
    "Type your line and press Enter. Commands: /end ends the session (then the CCD form), "
    "/pause pauses it (continue later with personae train --resume DB), /help shows this."
)
_LIST_SEPARATOR = ","


class Lines:
    """Where the trainee's input comes from: the terminal, or a file or pipe (one line per
    turn, echoed so the transcript reads as a session)."""

    def __init__(self, source: IO[str] | None = None) -> None:
        self.source = source if source is not None else sys.stdin
        self.tty = source is None and sys.stdin.isatty()

    def read(self, prompt: str) -> str | None:
        """The next line (None at the end of the input)."""
        if self.tty:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = self.source.readline()
        if not line:
            return None
        out.print(f"{prompt}{line.rstrip()}", markup=False)
        return line.rstrip("\n")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def answerer(lines: Lines) -> Any:
    """The runner's `on_interrupt` for a person at `lines`: shows the lines to answer and
    reads a line, `/pause` (or the end of the input), `/end` or `/help`."""
    from personae.runner import End, Pause

    async def answer(payload: dict[str, Any]) -> str | Pause | End:
        for line in payload.get("lines", []):
            out.print(f"[bold cyan]{escape(line['label'])}[/]: {escape(line['text'])}")
        prompt = (
            f"[turn {int(payload['turn']) + 1} · {_clock(float(payload['elapsed_s']))}] "
            f"{payload['label']} (you): "
        )
        while True:
            text = await asyncio.to_thread(lines.read, prompt)
            if text is None:
                err.print("input ended: pausing the session", markup=False)
                return Pause()
            command = text.strip().lower()
            if command == "/pause":
                return Pause()
            if command == "/end":
                return End()
            if command == "/help":
                out.print(HELP, markup=False)
            elif command.startswith("/"):
                out.print(f"unknown command {text.strip()!r}. {HELP}", markup=False)
            elif text.strip():
                return text.strip()

    return answer


def _people(scenario: Any) -> list[str]:
    from personae.backends import parse_spec
    from personae.runner import ConversationStudy

    specs = ConversationStudy(scenario).backend_specs()
    return [name for name, (spec, _) in specs.items() if parse_spec(spec)[0] == "human"]


def _on_models(scenario: Any, backend: str) -> Any:
    """`scenario` with every agent a person does not play on `backend`."""
    from personae.runner import evolve

    people = _people(scenario)
    agents = {
        name: spec if name in people else spec.model_copy(update={"backend": None})
        for name, spec in scenario.agents.items()
    }
    for name in people:  # they keep `human` whatever the scenario's default becomes
        agents[name] = agents[name].model_copy(update={"backend": "human"})
    return evolve(scenario, backend=backend, backend_options={}, agents=agents)


def _trainer_scenario(path: str, backend: str | None) -> Any:
    from personae.scenario import load_scenario, resolve_scenario_path

    scenario = load_scenario(resolve_scenario_path(path))
    if not _people(scenario):
        raise UserError(
            "no agent of this scenario is played by a person",
            where=str(path),
            fix="give the agent you play backend: human (see scenarios/counseling_trainer.yaml)",
        )
    return _on_models(scenario, backend) if backend else scenario


def _replay_so_far(db: Path) -> None:
    """Print the lines of the paused episodes of `db` (what the trainee said before)."""
    from personae.store import RunLog

    with RunLog(db) as log:
        for row in log.episodes():
            if row["status"] == "paused":
                out.rule(f"session so far ({row['episode_id']})")
                turns = log.turns(row["episode_id"])
                # up to the person's last line: the lines after it come with the next prompt
                last = max((i for i, t in enumerate(turns) if t.hidden.get("human")), default=-1)
                for turn in turns[: last + 1]:
                    out.print(f"[bold]{escape(turn.agent)}[/]: {escape(turn.text)}")


@app.command()
def train(
    scenario: Annotated[
        str | None,
        typer.Argument(help="Scenario YAML file or shipped name (an agent on backend human)."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the paused session in this database.")
    ] = None,
    db: Annotated[
        Path | None, typer.Option(help="Run database (default logs/<scenario>-<time>.db).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="Backend spec for every agent you do not play, e.g. embedded, scripted."),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", help="Read your lines (and the CCD form) from this file."),
    ] = None,
    ccd: Annotated[
        Path | None, typer.Option(help="Your CCD as a YAML file instead of the form.")
    ] = None,
    trust_backend: TrustBackend = False,
    imports: Imports = None,
) -> None:
    """Play an agent yourself (backend human): the client answers you, turn by turn.

    /end ends the session, then you fill in the client's cognitive model (CCD) you inferred and
    it is scored against the profile; /pause pauses (continue with --resume DB); /help.
    """
    from personae.agents._ccd import load_ccd
    from personae.runner import arun

    load_user_code(imports)
    if (scenario is None) == (resume is None):
        raise UserError("give a scenario or --resume DB (not both)", where="personae train",
                        fix="e.g. personae train counseling_trainer")  # fmt: skip
    if resume is not None and backend is not None:
        raise UserError("a resumed session keeps its backends", where="--backend",
                        fix="drop --backend")  # fmt: skip
    submitted = load_ccd(ccd) if ccd is not None else None  # a bad file costs nothing
    spec = _trainer_scenario(scenario, backend) if scenario is not None else None
    if input_file is not None and not input_file.is_file():
        raise UserError("no such file", where=f"--input {input_file}", fix="give a text file")
    source = input_file.open(encoding="utf-8") if input_file is not None else None
    lines = Lines(source)
    started: list[Path] = []
    if resume is not None:
        _replay_so_far(resume)
    else:
        out.print(HELP, markup=False)
    try:
        result = asyncio.run(
            arun(
                spec,
                db=db,
                resume=resume,
                concurrency=1,
                on_interrupt=answerer(lines),
                announce=started.append,
                trust_backend=trust_backend,
                notify=lambda line: err.print(line, markup=False),
            )
        )
        if resume is not None and not result.episodes:
            out.print(f"no paused session in {resume}: nothing to continue", markup=False)
            return
        if result.paused:
            out.print(
                f"session paused; continue it with: personae train --resume {result.db_path}",
                markup=False,
            )
            return
        _after_sessions(result.db_path, result.run_id, lines, submitted, backend, trust_backend)
    except KeyboardInterrupt:
        if started:
            err.print(f"interrupted (use /pause to keep your place); database: {started[0]}",
                      markup=False)  # fmt: skip
        raise typer.Exit(130) from None
    finally:
        if source is not None:
            source.close()


def _after_sessions(
    db: Path,
    run_id: str,
    lines: Lines,
    submitted: Any,
    backend: str | None,
    trust_backend: bool,
) -> None:
    """The CCD of each session that ended in this run: from `submitted` or the form; scored."""
    from personae.replay import ascore_ccd
    from personae.store import RunLog

    with RunLog(db) as log:
        ended = [e["episode_id"] for e in log.episodes(run_id) if e["status"] == "complete"]
    for episode_id in ended:
        out.rule(f"session {episode_id} ended")
        model = submitted if submitted is not None else ccd_form(lines)
        if model is None:
            out.print(f"no CCD given; score one later with: personae ccd score {db} --episode "
                      f"{episode_id} --ccd FILE.yaml", markup=False)  # fmt: skip
            continue
        scores = asyncio.run(
            ascore_ccd(
                db, episode=episode_id, ccd=model, backend=backend, trust_backend=trust_backend
            )
        )
        for scored in scores:
            show_scores(scored)


def _numbered(options: tuple[str, ...]) -> str:
    return "  ".join(f"{i}. {o}" for i, o in enumerate(options, 1))


def ccd_form(lines: Lines) -> Any:
    """The CCD filled in at `lines`, field by field (closed lists as numbered choices, several
    separated by commas; an empty answer leaves a field blank); None when the input ends
    first. A value off a list is asked again at a terminal and an error from a file."""
    from personae.agents._ccd import FREE_TEXT, parse_ccd
    from personae.agents._ccd_lists import CLOSED

    out.print("Your formulation of the client's cognitive model (CCD):", markup=False)
    answers: dict[str, Any] = {}
    for name in [*CLOSED, *FREE_TEXT]:
        if name in CLOSED:
            out.print(f"{name}: {_numbered(CLOSED[name])}", markup=False)
        while True:
            text = lines.read(f"{name}{' (numbers)' if name in CLOSED else ''}: ")
            if text is None:
                return None
            value: Any = text.strip()
            if name in CLOSED:
                value = [v.strip() for v in value.split(_LIST_SEPARATOR) if v.strip()]
            try:
                parse_ccd({name: value}, "the CCD form")
            except UserError as exc:
                if not lines.tty:
                    raise
                out.print(f"error: {exc.line()}", markup=False)
                continue
            answers[name] = value
            break
    return parse_ccd(answers, "the CCD form")


def _shown(value: list[str] | str, limit: int = 200) -> str:
    text = "; ".join(value) if isinstance(value, list) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show_scores(scored: Any) -> None:
    """A CCD beside the reference, field by field, with each field's score."""
    table = Table(title=f"CCD by {scored.source}, episode {scored.episode_id}",
                  title_justify="left")  # fmt: skip
    for column in ("field", "submitted", "reference", "score"):
        table.add_column(column, overflow="fold")
    for item in scored.fields:
        score = "-" if item.score is None else f"{item.score:.2f}"
        how = "Jaccard" if item.method == "jaccard" else "rater"
        table.add_row(item.field, escape(_shown(item.submitted)), escape(_shown(item.reference)),
                      f"{score} ({how})")  # fmt: skip
    out.print(table)
    mean = scored.mean
    out.print(f"mean score: {mean:.2f}" if mean is not None else "mean score: -", markup=False)


ccd_app = typer.Typer(name="ccd", help="Cognitive models (CCDs): score them.", no_args_is_help=True)
app.add_typer(ccd_app)


@ccd_app.command("score")
def ccd_score(
    db: Annotated[Path, typer.Argument(help="A run database.")],
    ccd: Annotated[
        Path | None,
        typer.Option(help="A CCD (YAML) to score; default: the formulators' CCDs in the run."),
    ] = None,
    episode: Annotated[
        str | None, typer.Option(help="Only this episode (id, prefix or # from show).")
    ] = None,
    source: Annotated[
        str, typer.Option(help="Who wrote --ccd (stored as judge ccd:SOURCE).")
    ] = "trainee",
    backend: Annotated[
        str | None, typer.Option(help="Backend of the free-text rater (default: the client's).")
    ] = None,
    trust_backend: TrustBackend = False,
    imports: Imports = None,
) -> None:
    """Score CCDs against the client's profile: Jaccard for the closed lists, a rater (0-10)
    for free text; one `judgments` row per field (rubric ccd)."""
    from personae.agents._ccd import load_ccd
    from personae.replay import ascore_ccd
    from personae.store import check_database

    load_user_code(imports)
    check_database(db)
    submitted = load_ccd(ccd) if ccd is not None else None
    if submitted is not None and episode is None:
        raise UserError("--ccd scores one episode", where="--ccd", fix="add --episode ID")
    for scored in asyncio.run(
        ascore_ccd(
            db,
            episode=episode,
            ccd=submitted,
            source=source,
            backend=backend,
            trust_backend=trust_backend,
        )
    ):
        show_scores(scored)
