"""Observers and judges: structured ratings of lines or episodes, stored in `judgments`.

A judge is an agent (role `judge`, or your own registered with `@register_judge`) declared in a
scenario as an observer of other agents (`observes: [helper]`, `when: turn | end`). It rates
with a `Rubric` — scored dimensions with anchors, or a code list — through bounded constrained
decoding; its verdicts go into the `judgments` table, never into the conversation unless routed
(`route_to: [learner]`) as a private line. `session_summarizer` writes a session's summary (a
course's memory of it). `judge_database` applies a judge to a finished run. `bgd_judge` judges a
computer-use episode's trajectory for blind goal-directedness.
"""

from personae.judges._annotators import (
    BASELINE_RUBRIC,
    Annotator,
    AnnotatorPersona,
    ProfanityCheck,
)
from personae.judges._bgd import BgdJudge, BgdPersona, BgdVerdict, Trajectory, TrajectoryStep
from personae.judges._formulator import FORMULATION, FormulatorAgent, FormulatorPersona
from personae.judges._judge import (
    JUDGES,
    JudgeAgent,
    JudgePersona,
    Judgment,
    get_judge,
    register_judge,
)
from personae.judges._rubric import Dimension, Rubric
from personae.judges._summarizer import SUMMARY_FIELDS, SessionSummarizer, SummarizerPersona

__all__ = [
    "BASELINE_RUBRIC",
    "FORMULATION",
    "JUDGES",
    "SUMMARY_FIELDS",
    "Annotator",
    "AnnotatorPersona",
    "BgdJudge",
    "BgdPersona",
    "BgdVerdict",
    "Dimension",
    "FormulatorAgent",
    "FormulatorPersona",
    "JudgeAgent",
    "JudgePersona",
    "Judgment",
    "ProfanityCheck",
    "Rubric",
    "SessionSummarizer",
    "SummarizerPersona",
    "Trajectory",
    "TrajectoryStep",
    "get_judge",
    "register_judge",
]
