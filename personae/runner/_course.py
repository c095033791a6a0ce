"""What each session of a course is given: the session goal, the earlier summaries, progress.

Before session k of a course runs, `session_context` builds the text each agent gets for the
whole session (its `Agent.context`, after its own instructions) from the outcomes of the
course's earlier sessions — live, or read back from the store on a resumed run:

- the agents in `course.goal_to`: which session of the course this is, its stage and the
  stage's goal;
- the agents in `course.memory`: the summaries of the earlier sessions, the last one in full and
  older ones short (themes and progress);
- the course's client: "Since last session: ..." with its progress per situation from the last
  summary (its profile evolves with the course).

A session whose summary is missing (it failed, or its summary did not parse) is said to be so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from personae._course import CourseSpec
from personae.judges import SUMMARY_FIELDS
from personae.scenario import EpisodePlan, Scenario, course_client, session_id

_HEADINGS = {
    "themes": "Main themes",
    "client_state": "Client state",
    "homework": "Homework",
    "plan": "Plan for next time",
}
assert set(_HEADINGS) == set(SUMMARY_FIELDS)


def situations_of(persona: BaseModel | None) -> tuple[str, ...]:
    """The situations of a client's profile: its `situations` list, or its one `situation`."""
    if persona is None:
        return ()
    many = getattr(persona, "situations", None)
    if isinstance(many, list | tuple):
        return tuple(str(s).strip() for s in many if str(s).strip())
    one = getattr(persona, "situation", None)
    return (one.strip(),) if isinstance(one, str) and one.strip() else ()


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _progress(summary: Mapping[str, Any], situations: Sequence[str]) -> list[str]:
    """`situation: N/10` for each progress score of a summary."""
    if "progress" in summary:
        return [f"overall: {summary['progress']}/10"]
    return [
        f"{_short(text, 70)}: {summary[f'progress_{i}']}/10"
        for i, text in enumerate(situations, 1)
        if f"progress_{i}" in summary
    ]


def _memory(
    course: CourseSpec,
    earlier: Sequence[tuple[int, dict[str, Any] | None]],
    situations: Sequence[str],
) -> str:
    """The earlier sessions' notes: older ones short, the last one in full."""
    lines = ["Notes from the earlier sessions of this course:"]
    for n, (session, summary) in enumerate(earlier):
        stage = course.stage_of(session).name
        if summary is None:
            lines.append(f"Session {session} ({stage}): no notes were recorded.")
            continue
        progress = "; ".join(_progress(summary, situations))
        if n < len(earlier) - 1:
            themes = _short(str(summary.get("themes", "")))
            short = [p for p in (themes, f"Progress: {progress}." if progress else "") if p]
            lines.append(f"Session {session} ({stage}): {' '.join(short) or 'no notes.'}")
            continue
        lines.append(f"Session {session} ({stage}), the last one:")
        lines += [f"- {_HEADINGS[k]}: {str(summary.get(k, '')).strip()}" for k in _HEADINGS]
        if progress:
            lines.append(f"- Progress: {progress}")
    return "\n".join(lines)


def _goal(course: CourseSpec, session: int) -> str:
    stage = course.stage_of(session)
    text = f"This is session {session} of {course.sessions} of the course (stage {stage.name})."
    return f"{text} Goal for this session: {stage.goal.strip()}" if stage.goal.strip() else text


def summary_of(outcome: Any, summarizer: str) -> dict[str, Any] | None:
    """The summary a session's outcome holds (None: missing or not parsed)."""
    if not isinstance(outcome, dict):
        return None
    verdict = (outcome.get("verdicts") or {}).get(summarizer)
    return verdict if isinstance(verdict, dict) else None


def session_context(
    scenario: Scenario, plan: EpisodePlan, outcomes: Mapping[str, Any]
) -> dict[str, str]:
    """The text each agent is given for session `plan` of its course (see the module doc)."""
    course = scenario.course
    assert course is not None
    session, course_id = int(plan.condition["session"]), str(plan.condition["course"])
    client = course_client(scenario)
    situations = situations_of(plan.personas.get(client) if client else None)
    earlier = [
        (k, summary_of(outcomes.get(session_id(course_id, k)), course.summary))
        for k in range(course.first_session(), session)
    ]
    speakers = scenario.cast().speakers
    memory = course.memory if course.memory is not None else list(speakers)
    goal_to = course.goal_to if course.goal_to is not None else [n for n in speakers if n != client]
    parts: dict[str, list[str]] = {}
    for name in goal_to:
        parts.setdefault(name, []).append(_goal(course, session))
    if earlier:
        notes = _memory(course, earlier, situations)
        for name in memory:
            parts.setdefault(name, []).append(notes)
        last = earlier[-1][1]
        if client is not None and last is not None and (progress := _progress(last, situations)):
            parts.setdefault(client, []).append(
                "Since last session: progress (0 = no change, 10 = resolved) on "
                + "; ".join(progress)
                + ". The client feels and talks accordingly."
            )
    return {name: "\n\n".join(texts) for name, texts in parts.items()}
