"""Re-scoring a finished teaching run from its database, without a model call.

`teaching_report(db)` rebuilds the run's study from the spec it stored, reads every planned
episode's stored outcome (`episodes.outcome_json`) and scores it through `TeachingStudy.score`,
the path the run itself ends with — so with no options it reproduces the run's own tables
exactly. Other budgets, other intervention functions and other bootstrap settings are re-scored
from the same outcomes: the per-item results without and with each explanation do not depend on
them. An arm that would explain an item the run never explained with that style (its outcome
needs model calls the database does not hold) is a one-line `UserError` naming the function and
budget, as is anything else wrong with the options, before anything is printed. Nothing is
written to the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from personae.errors import UserError
from personae.experiments._interventions import get_intervention
from personae.experiments._runner import TeachingResult
from personae.experiments._scoring import MissingOutcomes
from personae.experiments._study import TeachingStudy
from personae.plugins import load_imports
from personae.runner import stored_kind, study_of_run
from personae.seeds import check_seed
from personae.store import RunLog

#: Fewest bootstrap resamples a report accepts (as a scenario's `bootstrap.resamples`).
MIN_RESAMPLES = 100


def teaching_report(
    db: str | Path,
    *,
    run_id: str | None = None,
    budgets: Sequence[float] | None = None,
    functions: Sequence[str] | None = None,
    resamples: int | None = None,
    bootstrap_seed: int | None = None,
    imports: Sequence[str] = (),
    notify: Callable[[str], None] | None = None,
) -> TeachingResult:
    """The tables of a teaching run in `db`, re-scored from its stored outcomes.

    Args:
        db: A run database holding a teaching run.
        run_id: Which teaching run (default: the newest).
        budgets: Budgets to score (default: the run's), each in [0, 1].
        functions: Intervention functions of the main table (default: the run's); any
            registered function whose choices the run's explanations cover.
        resamples: Bootstrap resamples (default: the run's).
        bootstrap_seed: Bootstrap seed (default: the run's).
        imports: Python files or modules with your own intervention functions or roles.
        notify: Called with one-line notes (an unfinished run, functions that rank otherwise
            than they did in the run).

    Returns:
        A `TeachingResult` of the run (tokens, calls and seconds: all its runs in `db`).

    Raises:
        UserError: no teaching run in `db`, a bad option, an unknown function, or an arm whose
            scoring needs model calls not in the database.
    """
    load_imports(imports, where="--import")
    with RunLog(db) as log:
        run = _teaching_run(log, run_id)
        stored = study_of_run(log, run["run_id"])
        assert isinstance(stored, TeachingStudy)
        study = _with_options(stored, budgets, functions, resamples, bootstrap_seed)
        planned = [p.episode_id for p in study.plan()]
        outcomes = log.outcomes(planned)
        if not outcomes:
            raise UserError(
                "the teaching run has no complete episodes to score",
                where=f"{log.path}: run {run['run_id']}",
                fix=f"resume it with 'personae run --resume {log.path}'",
            )
        try:
            result = study.score(outcomes)
        except MissingOutcomes as exc:
            raise _needs_calls(exc, stored, log.path) from None
        if notify is not None:
            _notes(log, run, study, len(planned) - len(outcomes), notify)
        _account(log, run, result)
    return result


def _teaching_run(log: RunLog, run_id: str | None) -> dict[str, Any]:
    """The chosen (default: newest) teaching run of `log`."""
    runs = [r for r in log.runs() if stored_kind(r) == "teaching"]
    if run_id is not None:
        chosen = [r for r in runs if r["run_id"] == run_id]
        if not chosen:
            ids = ", ".join(r["run_id"] for r in runs) or "(none)"
            raise UserError(
                f"no teaching run {run_id!r} in this database",
                where=f"{log.path}: --run",
                fix=f"teaching runs here: {ids}",
            )
        return chosen[0]
    if not runs:
        raise UserError(
            "this database holds no teaching run",
            where=str(log.path),
            fix="report on the database of 'personae experiment teaching SCENARIO --db DB'",
        )
    return runs[-1]


def _with_options(
    stored: TeachingStudy,
    budgets: Sequence[float] | None,
    functions: Sequence[str] | None,
    resamples: int | None,
    bootstrap_seed: int | None,
) -> TeachingStudy:
    """The stored study with the report's options (each checked, naming its option)."""
    spec = stored.spec
    update: dict[str, Any] = {}
    if budgets is not None:
        update["budgets"] = _checked_budgets(budgets)
    if functions is not None:
        names = list(dict.fromkeys(functions))
        if not names:
            raise UserError(
                "no intervention function given",
                where="--functions",
                fix="name at least one, e.g. --functions random,expected_utility",
            )
        for name in names:
            get_intervention(name, where="--functions")
        update["functions"] = names
    boot: dict[str, Any] = {}
    if resamples is not None:
        if isinstance(resamples, bool) or not isinstance(resamples, int):
            raise UserError(
                f"bad number of resamples {resamples!r}",
                where="--n-resamples",
                fix=f"give a whole number of at least {MIN_RESAMPLES}",
            )
        if resamples < MIN_RESAMPLES:
            raise UserError(
                f"{resamples} resamples are too few for a bootstrap interval",
                where="--n-resamples",
                fix=f"use at least {MIN_RESAMPLES}",
            )
        boot["resamples"] = resamples
    if bootstrap_seed is not None:
        boot["seed"] = check_seed(bootstrap_seed, "--seed")
    if boot:
        update["bootstrap"] = spec.bootstrap.model_copy(update=boot)
    if not update:
        return stored
    changed = spec.model_copy(update=update)
    changed.base_dir = spec.base_dir
    return TeachingStudy(changed)


def _checked_budgets(budgets: Sequence[float]) -> list[float]:
    chosen: list[float] = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int | float) or not 0.0 <= b <= 1.0:
            raise UserError(
                f"bad budget {b!r}: a budget is a fraction of the test items, 0 to 1",
                where="--budgets",
                fix="write e.g. --budgets 0,0.1,0.25,0.5,1",
            )
        if float(b) not in chosen:
            chosen.append(float(b))
    if not chosen:
        raise UserError("no budget given", where="--budgets", fix="write e.g. --budgets 0,0.5,1")
    return chosen


def _needs_calls(exc: MissingOutcomes, stored: TeachingStudy, db: Path) -> UserError:
    """The one-line error for an arm the stored outcomes cannot score."""
    new_function = exc.function not in stored.spec.functions and exc.function != "misaligned"
    return UserError(
        f"intervention function {exc.function!r} at budget {exc.budget:g} would explain "
        f"{len(exc.item_ids)} items (seed {exc.seed}, e.g. {exc.item_ids[0]}) that the run "
        f"never gave {exc.style} explanations: scoring it needs model calls not in the database",
        where=f"{db}: {'--functions' if new_function else '--budgets'}",
        fix="report budgets and functions the run's explanations cover (a run with "
        "true_utility or budget 1 explains every item), or run the experiment with it into a "
        "new database",
    )


def _notes(
    log: RunLog,
    run: dict[str, Any],
    study: TeachingStudy,
    incomplete: int,
    notify: Callable[[str], None],
) -> None:
    """Say what the tables rest on when it is not a finished run's every episode, and which
    functions rank otherwise now than they did when the run decided."""
    if incomplete:
        notify(
            f"note: {incomplete} episodes of the experiment are not complete (run "
            f"{run['run_id']} is {run['status']}): their items count as failed; finish it with "
            f"'personae run --resume {log.path}'"
        )
    if not log.has_table("interventions"):
        return
    changed: set[str] = set()
    for row in log.query(
        "SELECT DISTINCT seed, explanation, function, item_id, rank FROM interventions "
        "WHERE run_id = ?",
        run["run_id"],
    ):
        state = study.state.get(row["seed"])
        positions = state.positions.get((row["explanation"], row["function"])) if state else None
        if positions is None:
            continue
        now = positions.get(row["item_id"])
        if (now[0] if now is not None else None) != row["rank"]:
            changed.add(str(row["function"]))
    if changed:
        notify(
            f"note: {', '.join(sorted(changed))} now rank the items otherwise than the run's "
            "recorded decisions (their code changed?): the tables use today's rankings"
        )


def _account(log: RunLog, run: dict[str, Any], result: TeachingResult) -> None:
    """Fill in the run's id, database, and the calls, tokens and seconds of every run of this
    experiment in the database (a resumed experiment spans several)."""
    result.run_id, result.db_path = str(run["run_id"]), log.path
    elapsed = 0.0
    for other in log.runs():
        if stored_kind(other) != "teaching" or other["scenario"] != run["scenario"]:
            continue
        totals = log.summary(other["run_id"])
        result.prompt_tokens += int(totals["prompt_tokens"])
        result.completion_tokens += int(totals["completion_tokens"])
        result.calls += int(totals["calls"])
        summary = json.loads(other.get("summary_json") or "{}")
        elapsed += float(summary.get("elapsed_s") or 0.0)
    result.elapsed_s = elapsed
