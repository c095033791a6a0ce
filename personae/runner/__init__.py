"""THE runner: every study — conversation scenarios, teaching experiments, forks — runs through
`execute` (plan → episodes in flight → one writer). `run` is the Python API behind
`personae run`; a `Shard` is a deterministic slice of a plan, for running one plan in several
processes.
"""

from personae.runner._conversation import (
    ConversationStudy,
    arun,
    build_agents,
    build_observers,
    build_seats,
    evolve,
    resumed_study,
    run,
    with_backend,
)
from personae.runner._engine import RunBackends, RunResult, default_db_path, execute
from personae.runner._shards import Shard, shard_number, stored_shard
from personae.runner._study import (
    STUDIES,
    End,
    EpisodeJob,
    Pause,
    Services,
    Study,
    register_study,
    stored_kind,
    study_of_run,
)

__all__ = [
    "STUDIES",
    "ConversationStudy",
    "End",
    "EpisodeJob",
    "Pause",
    "RunBackends",
    "RunResult",
    "Services",
    "Shard",
    "Study",
    "arun",
    "build_agents",
    "build_observers",
    "build_seats",
    "default_db_path",
    "evolve",
    "execute",
    "register_study",
    "resumed_study",
    "run",
    "shard_number",
    "stored_kind",
    "stored_shard",
    "study_of_run",
    "with_backend",
]
