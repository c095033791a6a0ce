"""Replay: debug, re-execute and fork logged episodes.

`ReplayBackend` (backend spec `replay:PATH.db`) serves the model outputs recorded in a run
database. `verify_episode` / `verify_run` re-run an episode's graph — any graph kind — with the
current code on those outputs and report "identical" or the first differing turn with a diff of
its prompt. `fork_episode` continues an episode from turn K with another backend, sampling or
persona setting as a new episode that records its parent. `judge_database` adds a judge's
verdicts to a finished run. `episode_steps` is what the terminal viewer (`personae replay`)
shows per turn.
"""

from personae.replay._backend import ForkBackend, ReplayBackend, ReplayMissError, call_id_for
from personae.replay._ccd import CCDScores, FieldScore, score_ccd
from personae.replay._ccd import ascore_database as ascore_ccd
from personae.replay._fork import ForkResult, ForkStudy, afork_episode, fork_episode, fork_id
from personae.replay._judge import (
    JudgeResult,
    JudgeSpec,
    ajudge_database,
    judge_database,
    load_judge_spec,
)
from personae.replay._setup import (
    EpisodeSetup,
    is_scenario_run,
    lineage,
    load_setup,
    prepare_stages,
    scenario_of_run,
    utterances,
)
from personae.replay._steps import HIDDEN_TABLES, Step, episode_steps
from personae.replay._verify import (
    TurnDiff,
    VerifyResult,
    averify_episode,
    averify_run,
    rendered_prompt,
    verify_episode,
    verify_run,
)

__all__ = [
    "HIDDEN_TABLES",
    "CCDScores",
    "EpisodeSetup",
    "FieldScore",
    "ForkBackend",
    "ForkResult",
    "ForkStudy",
    "JudgeResult",
    "JudgeSpec",
    "ReplayBackend",
    "ReplayMissError",
    "Step",
    "TurnDiff",
    "VerifyResult",
    "afork_episode",
    "ajudge_database",
    "ascore_ccd",
    "averify_episode",
    "averify_run",
    "call_id_for",
    "episode_steps",
    "fork_episode",
    "fork_id",
    "is_scenario_run",
    "judge_database",
    "lineage",
    "load_judge_spec",
    "load_setup",
    "prepare_stages",
    "rendered_prompt",
    "scenario_of_run",
    "score_ccd",
    "utterances",
    "verify_episode",
    "verify_run",
]
