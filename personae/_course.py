"""The `course:` block of a scenario: every (condition, repeat) becomes a course of sessions.

A course is a scenario feature, not a runner of its own: session k of every course is an
ordinary episode in stage k-1 of the one runner, so session k starts only once every course's
session k-1 is done. Sessions are grouped into named stages (assessment, intervention, ...),
each with an optional goal given to the agents in `goal_to`; a summary agent (role
`session_summarizer`) writes each session's summary at its end, and the earlier summaries are
given to the agents in `memory` before the next session. Stage names are referenced by
`start_stage` and the keys of `per_stage`; `check_course` checks every reference.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

_STAGE_NAME = r"^[A-Za-z0-9_.-]+$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageSpec(_Spec):
    """A run of consecutive sessions with one goal."""

    name: str = Field(pattern=_STAGE_NAME, max_length=40)
    sessions: StrictInt = Field(1, ge=1, description="Sessions in this stage.")
    goal: str = Field("", description="The session goal given to the agents in `goal_to`.")


class CourseSpec(_Spec):
    """Multi-session courses: sessions per course, their stages, summaries and memory."""

    sessions: StrictInt = Field(ge=1, le=100, description="Sessions per course.")
    summary: str = Field(
        description="The agent (role session_summarizer) writing each session's summary."
    )
    stages: list[StageSpec] | None = Field(
        None, description="Stages in order; their sessions sum to `sessions` (default: one)."
    )
    memory: list[str] | None = Field(
        None, description="Agents given the earlier sessions' summaries (default: every speaker)."
    )
    client: str | None = Field(
        None,
        description="The agent whose progress per situation is tracked and told to it "
        "(default: the one speaker with role client, if any).",
    )
    goal_to: list[str] | None = Field(
        None, description="Agents given the stage's goal (default: every speaker but the client)."
    )
    start_stage: str | None = Field(
        None, description="Courses begin at this stage (earlier sessions are not run)."
    )
    per_stage: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="STAGE: {AGENT.FIELD: VALUE}: persona fields changed in that stage's sessions.",
    )

    def stage_list(self) -> list[StageSpec]:
        """The stages (one named `session` holding every session when none are given)."""
        return self.stages or [StageSpec(name="session", sessions=self.sessions)]

    def stage_of(self, session: int) -> StageSpec:
        """The stage of session `session` (1-based)."""
        end = 0
        for stage in self.stage_list():
            end += stage.sessions
            if session <= end:
                return stage
        raise ValueError(f"session {session} is past the course's {self.sessions}")

    def first_session(self) -> int:
        """The first session run: 1, or the first of `start_stage`."""
        first = 1
        for stage in self.stage_list():
            if stage.name == self.start_stage:
                return first
            first += stage.sessions
        return 1
