"""Export: turn run databases into training data and analysis tables, or browse them.

`sft_conversations` (OpenAI-style chat records from one role's own view; no hidden state),
`dpo_pairs` (prompt/chosen/rejected from sibling forks ranked by judge scores, and from
supervisors' choices among candidates), `candidate_report` (selection counts and Elo ratings
of candidates, with the session ratings), `turn_rows` (one flat row per turn with episode and
condition fields; `nested` decodes its JSON columns), `intervention_rows` (a teaching run's
decisions), `write_jsonl` / `write_csv` / `write_parquet`, and `browse` (datasette on 127.0.0.1
over a snapshot: the episode list, episodes as chats, search).
Every export reads episodes chosen by an `EpisodeFilter` (scenario, status, condition).
"""

from personae.export._browse import browse, browse_copy, datasette_args
from personae.export._candidates import (
    CandidateReport,
    CandidateStats,
    Choice,
    SessionRating,
    candidate_choices,
    candidate_pairs,
    candidate_report,
    elo_ratings,
    selection_table,
    session_ratings,
)
from personae.export._chat import DpoExport, dpo_pairs, sft_conversations
from personae.export._select import STATUSES, EpisodeFilter, select_episodes
from personae.export._tables import (
    env_step_rows,
    intervention_rows,
    nested,
    turn_rows,
    write_csv,
    write_jsonl,
    write_parquet,
)

__all__ = [
    "STATUSES",
    "CandidateReport",
    "CandidateStats",
    "Choice",
    "DpoExport",
    "EpisodeFilter",
    "SessionRating",
    "browse",
    "browse_copy",
    "candidate_choices",
    "candidate_pairs",
    "candidate_report",
    "datasette_args",
    "dpo_pairs",
    "elo_ratings",
    "env_step_rows",
    "intervention_rows",
    "nested",
    "select_episodes",
    "selection_table",
    "session_ratings",
    "sft_conversations",
    "turn_rows",
    "write_csv",
    "write_jsonl",
    "write_parquet",
]
