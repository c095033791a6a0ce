"""`personae replay`: step through, re-execute or fork a logged episode; `show --compare`.

The stepper shows per turn the speaker, the utterance, the exact rendered prompt, sampling
parameters and seed, tokens and latency, and the hidden state in a dim panel marked HIDDEN.
Interactive keys (read from stdin): n / Enter next, p previous, j N jump to turn N, q quit;
`--print` prints every step (or only `--turn N`) for logs and tests. `--verify` exits 1 when a
re-run differs from the log; user errors exit 2 like every command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from personae.cli._app import Imports, TrustBackend, app, err, load_user_code, out
from personae.errors import UserError
from personae.replay import Step, VerifyResult
from personae.store import RunLog

_COLOURS = ["cyan", "magenta", "green", "yellow"]


def _call_panel(call: dict[str, Any], retry_note: str) -> Panel:
    from personae.replay import rendered_prompt

    params = call.get("params", {})
    stats = Table.grid(padding=(0, 2))
    stats.add_column(style="bold")
    stats.add_column()
    sampling = ", ".join(
        f"{k}={params[k]}"
        for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens")
        if k in params
    )
    purpose = call.get("purpose")
    label = f" — {purpose}" if purpose and purpose != "turn" else ""
    stats.add_row("call", f"{call['call_id']}{retry_note}{label}  ({call.get('backend')})")
    stats.add_row("sampling", sampling)
    stats.add_row("seed", str(call.get("seed")))
    if params.get("stop"):
        stats.add_row("stop", json.dumps(params["stop"]))
    for extra in ("choices", "json_schema", "logprobs"):
        if params.get(extra):
            stats.add_row(extra, json.dumps(params[extra]))
    cached = call.get("cached_tokens")
    stats.add_row(
        "tokens",
        f"prompt {call.get('prompt_tokens')}, completion {call.get('completion_tokens')}"
        + (f", cached {cached}" if cached is not None else ""),
    )
    stats.add_row(
        "latency",
        f"{call.get('latency_s') or 0:.3f} s, {call.get('attempts')} attempt(s), "
        f"finish {call.get('finish_reason')}",
    )
    stats.add_row("raw output", Text(repr(call.get("output") or "")))
    prompt = Panel(
        Text(rendered_prompt(call)),
        title=f"rendered prompt ({call.get('render_mode')})",
        title_align="left",
        border_style="blue",
    )
    return Panel(Group(stats, prompt), title="model call", title_align="left")


def render_step(step: Step, total: int, colour: str) -> Group:
    """One turn of the stepper as a rich renderable."""
    turn = step.turn
    heard = f"  to {', '.join(turn.audience)}, privately" if turn.audience is not None else ""
    kind = f"  [{turn.kind}]" if turn.kind != "line" else ""
    parts: list[Any] = [
        Text.assemble(
            (f"turn {turn.idx}/{total - 1}  ", "bold"),
            (turn.agent, f"bold {colour}"),
            (f"  ({turn.role}){kind}{heard}", "dim"),
        ),
        Panel(
            Text(turn.text), title="utterance (visible)", title_align="left", border_style=colour
        ),
    ]
    if turn.decision:
        parts.append(Text(f"turn policy: {json.dumps(turn.decision)}", "dim"))
    if not step.calls:
        parts.append(Text("no model call: a fixed line (e.g. the persona's opening)", "dim"))
    for i, call in enumerate(step.calls):
        note = "  — retry after an unusable output" if i else ""
        parts.append(_call_panel(call, note))
    if step.has_hidden:
        hidden: dict[str, Any] = {}
        if turn.hidden:
            hidden[f"{turn.agent} (private state)"] = turn.hidden
        hidden.update(step.hidden_rows)
        parts.append(
            Panel(
                Text(json.dumps(hidden, indent=2, default=str), style="dim"),
                title="HIDDEN — not seen by the other agents",
                title_align="left",
                border_style="dim red",
                style="dim",
            )
        )
    for table, rows in step.side_rows.items():
        parts.append(Text(f"{table}: {json.dumps(rows, default=str)}", "dim"))
    return Group(*parts)


def _header(row: dict[str, Any]) -> str:
    fork = (
        f"  fork of {row['parent_episode_id']} at turn {row['fork_turn']}"
        if row.get("parent_episode_id")
        else ""
    )
    return (
        f"{row['episode_id']}  {row['scenario']}  {row['status']} ({row['end_reason'] or '-'}), "
        f"{row['n_turns']} turns{fork}"
    )


def _stepper(log: RunLog, episode: str, start: int | None, print_all: bool) -> None:
    from personae.replay import episode_steps

    row, steps = episode_steps(log, episode)
    out.rule(_header(row))
    out.print(f"condition: {json.dumps(row['condition'])}", markup=False)
    if not steps:
        out.print("no turns logged")
        return
    total = len(steps)
    if start is not None and not 0 <= start < total:
        raise UserError(
            f"turn {start} is out of range ({total} turns)",
            where="--turn",
            fix=f"use a turn from 0 to {total - 1}",
        )
    palette: dict[str, str] = {}
    for s in steps:
        palette.setdefault(s.turn.agent, _COLOURS[len(palette) % len(_COLOURS)])

    def show(i: int) -> None:
        out.print(render_step(steps[i], total, palette[steps[i].turn.agent]), soft_wrap=False)

    if print_all:
        for i in [start] if start is not None else range(total):
            show(i)
        return
    i, dirty = start or 0, True
    while True:
        if dirty:
            show(i)
        dirty = False
        try:
            command = input(f"[{i}/{total - 1}] n next · p previous · j N jump · q quit > ")
        except EOFError:
            break
        command = command.strip().lower()
        if command == "q":
            break
        if command in ("", "n"):
            dirty = i + 1 < total
            i = min(i + 1, total - 1)
            if not dirty:
                out.print("(last turn)")
        elif command == "p":
            dirty = i > 0
            i = max(i - 1, 0)
            if not dirty:
                out.print("(first turn)")
        elif command.startswith("j"):
            target = command[1:].strip()
            if target.isdigit() and int(target) < total:
                i, dirty = int(target), True
            else:
                out.print(f"no turn {target!r}: turns are 0 to {total - 1}")
        else:
            out.print("keys: n (or Enter) next, p previous, j N jump to turn N, q quit")


def _print_verdicts(results: list[VerifyResult]) -> bool:
    same = True
    for result in results:
        if result.identical:
            out.print(f"[green]identical[/] {result.episode_id} ({result.turns} turns)")
            continue
        same = False
        diff = result.first_diff
        assert diff is not None
        out.print(
            Text.assemble(
                ("differs", "red"), f" {result.episode_id} at turn {diff.turn}: {diff.what}"
            )
        )
        for line in diff.diff.splitlines():
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
            out.print(Text(line, style=style or ""))
    if len(results) != 1:
        n_same = sum(r.identical for r in results)
        out.print(f"{n_same}/{len(results)} episodes identical")
    return same


@app.command()
def replay(
    db: Annotated[Path, typer.Argument(help="A run database.")],
    episode: Annotated[
        str | None,
        typer.Argument(help="Episode id (or unique prefix, or list index)."),
    ] = None,
    print_all: Annotated[
        bool, typer.Option("--print", help="Print every step, no interaction.")
    ] = False,
    turn: Annotated[
        int | None, typer.Option(help="Start at this turn (with --print: show only it).")
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            help="Re-run the episode (all complete episodes if none is given) on its recorded "
            "outputs and report 'identical' or the first differing turn; exit 1 on a difference."
        ),
    ] = False,
    run: Annotated[
        str | None, typer.Option("--run", help="With --verify and no EPISODE: only this run.")
    ] = None,
    fork_at: Annotated[
        int | None,
        typer.Option(help="Keep turns 0..K-1 and continue from turn K as a new episode."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="With --fork-at: backend spec for the continuation.")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="With --fork-at: AGENT.sampling.FIELD=VALUE or AGENT.FIELD=VALUE (persona).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="With --fork-at: no progress bar.")
    ] = False,
    trust_backend: TrustBackend = False,
    imports: Imports = None,
) -> None:
    """Step through a logged episode, re-execute it exactly (--verify), or fork it.

    Works for every graph kind (conversations of any size, teaching items). A run that used
    your own roles or graph kinds needs the same --import again.
    """
    load_user_code(imports)
    if (backend or settings) and fork_at is None:
        raise UserError("--backend and --set only apply to a fork", fix="add --fork-at K")
    if fork_at is not None and verify:
        raise UserError("--fork-at and --verify do not go together", fix="run them one by one")
    if run is not None and (episode is not None or not verify):
        raise UserError("--run only applies to --verify without an EPISODE", where="--run")
    if verify:
        from personae.replay import verify_episode, verify_run

        results = [verify_episode(db, episode)] if episode else verify_run(db, run)
        if not results:
            out.print("no complete episode to verify")
        if not _print_verdicts(results):
            raise typer.Exit(1)
        return
    if episode is None:
        raise UserError(
            "no episode given",
            where="personae replay",
            fix=f"pass an EPISODE (list them with 'personae show {db}') or --verify for all",
        )
    if fork_at is not None:
        from personae.replay import fork_episode

        result = fork_episode(
            db, episode, fork_at, backend=backend, settings=settings or (),
            trust_backend=trust_backend, notify=lambda line: err.print(line, markup=False),
            progress=not quiet,
        )  # fmt: skip
        out.print(result.line(), markup=False)
        out.print(
            f"compare: personae show {db} --compare {result.parent_episode_id} {result.episode_id}",
            markup=False,
        )
        if result.status != "complete":
            raise typer.Exit(1)
        return
    with RunLog(db) as log:
        _stepper(log, episode, turn, print_all)


def compare_episodes(log: RunLog, first: str, second: str) -> None:
    """Print two episodes side by side (turns both share are dimmed)."""
    rows = [log.episode(first), log.episode(second)]
    turns = [log.turns(r["episode_id"]) for r in rows]
    table = Table(show_lines=True, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    for row in rows:
        changed = row["condition"]
        table.add_column(Text(f"{_header(row)}\n{json.dumps(changed)}"), ratio=1)
    for idx in range(max(len(t) for t in turns)):
        a = turns[0][idx] if idx < len(turns[0]) else None
        b = turns[1][idx] if idx < len(turns[1]) else None
        shared = a is not None and b is not None and (a.agent, a.text) == (b.agent, b.text)
        cells = [
            Text(f"{t.agent}: {t.text}", style="dim" if shared else "") if t else Text("")
            for t in (a, b)
        ]
        table.add_row(str(idx), *cells)
    out.print(table, soft_wrap=False)
    prefix = 0
    for a, b in zip(*turns, strict=False):
        if (a.agent, a.text) != (b.agent, b.text):
            break
        prefix += 1
    if prefix == len(turns[0]) == len(turns[1]):
        out.print(f"the two transcripts are identical ({prefix} turns)")
    else:
        out.print(f"{prefix} shared turns (dimmed); the episodes differ from turn {prefix} on")
