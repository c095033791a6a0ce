"""Choices among candidates, read back: preference pairs, selection counts, Elo ratings, and the
session ratings beside them.

A turn of an agent with candidates holds its tree in `hidden_json`: every candidate's proposal
(`candidates`: id, text, call id), the supervisor's choice (`chosen`), its `rationale` and the
order the supervisor saw them in; the supervisor's verdict is in `judgments` (turn, judge: the
supervisor), invalid when no valid choice came and the first candidate was said. Such a
fallback is no preference: it gives no pairs and counts in no rating.

- `candidate_choices` reads every choice of the chosen episodes, in run, episode and turn order
  (a fork's own only: the turns it kept from its parent are the parent's choices).
- `candidate_pairs` makes DPO records from them: the agent's own view of the conversation
  before the turn (as `personae export --format dpo` renders a prompt), the chosen proposal,
  and each rejected one that differs from it.
- `selection_table` counts, per agent and candidate, the turns it was offered and chosen, and
  `elo_ratings` rates the candidates: each choice is a win of the chosen candidate over every
  rejected one, games played in order (K = 16, everyone starting at 1000).
- `session_ratings` summarises the verdicts on whole episodes (`when: end` judges) per judge:
  the mean score (0..N with a rubric's `normalise: N`) and the mean of each dimension.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personae.errors import UserError
from personae.export._chat import _chat_agents, _check_role, _messages, _scenario_episodes
from personae.export._select import EpisodeFilter, select_episodes
from personae.replay import load_setup, utterances
from personae.store import RunLog

#: Elo's K-factor and starting rating.
ELO_K = 16.0
ELO_START = 1000.0


@dataclass(frozen=True)
class Choice:
    """One turn's choice among candidates.

    Attributes:
        episode_id: The episode.
        turn: The turn index.
        agent: The agent whose line it was.
        role: That agent's role.
        proposals: Each candidate's proposal, by id, in scenario order ("": it passed).
        chosen: The id of the proposal said.
        supervisor: Who chose.
        rationale: Why (may be "").
        valid: False when the supervisor gave no valid choice (the first proposal was said).
    """

    episode_id: str
    turn: int
    agent: str
    role: str
    proposals: dict[str, str]
    chosen: str
    supervisor: str
    rationale: str
    valid: bool

    @property
    def rejected(self) -> list[str]:
        """The ids not chosen, in scenario order."""
        return [c for c in self.proposals if c != self.chosen]


def _choices(log: RunLog, episode: dict[str, Any]) -> list[Choice]:
    """The choices of one episode (a fork's from its fork turn: the earlier ones are its
    parent's, kept verbatim)."""
    episode_id, since = str(episode["episode_id"]), int(episode.get("fork_turn") or 0)
    verdicts = {
        (j["turn_idx"], j["judge"]): bool(j["valid"])
        for j in log.judgments(episode_id)
        if j["turn_idx"] is not None
    }
    found = []
    for turn in log.turns(episode_id):
        tree = turn.hidden.get("candidates")
        if not isinstance(tree, list) or "chosen" not in turn.hidden or turn.idx < since:
            continue
        supervisor = str(turn.hidden.get("supervisor") or "")
        found.append(
            Choice(
                episode_id=episode_id,
                turn=turn.idx,
                agent=turn.agent,
                role=turn.role,
                proposals={str(p["id"]): str(p.get("text") or "") for p in tree},
                chosen=str(turn.hidden["chosen"]),
                supervisor=supervisor,
                rationale=str(turn.hidden.get("rationale") or ""),
                valid="supervisor_error" not in turn.hidden
                and verdicts.get((turn.idx, supervisor), True),
            )
        )
    return found


def candidate_choices(db: str | Path, chosen: EpisodeFilter | None = None) -> list[Choice]:
    """Every choice among candidates in the chosen episodes (default: every complete one), in
    run, episode and turn order.

    Raises:
        UserError: a bad filter.
    """
    with RunLog(db) as log:
        episodes = select_episodes(log, chosen or EpisodeFilter())
        return [c for e in episodes for c in _choices(log, e)]


def candidate_pairs(
    db: str | Path,
    role: str,
    chosen: EpisodeFilter | None = None,
    *,
    judge: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """DPO records from the valid choices on lines of `role` (`judge`: only this supervisor's),
    and the number of turns they came from.

    Each record is `{"prompt": [...], "chosen": [assistant], "rejected": [assistant]}` (TRL's
    conversational preference format) plus where it came from: the prompt is the agent's own
    chat view of the turns before the choice (its audience, no hidden state), one record per
    rejected proposal that differs from the chosen one (abstentions give none).

    Raises:
        UserError: unknown role or a bad filter.
    """
    records: list[dict[str, Any]] = []
    turns = 0
    with RunLog(db) as log:
        _check_role(log, role)
        for episode in _scenario_episodes(log, chosen):
            picks = [
                c
                for c in _choices(log, episode)
                if c.role == role and c.valid and (judge is None or c.supervisor == judge)
            ]
            if not picks:
                continue
            setup = load_setup(log, episode["episode_id"])
            agents = _chat_agents(setup)
            logged = log.turns(setup.episode_id)
            for pick in picks:
                said = pick.proposals[pick.chosen]
                others = [
                    c for c in pick.rejected if pick.proposals[c] and pick.proposals[c] != said
                ]
                if not said or not others:
                    continue
                turns += 1
                before = utterances([t for t in logged if t.idx < pick.turn], agents)
                prompt = _messages(agents[pick.agent], before)
                for other in others:
                    records.append(
                        {
                            "prompt": prompt,
                            "chosen": [{"role": "assistant", "content": said}],
                            "rejected": [{"role": "assistant", "content": pick.proposals[other]}],
                            "episode_id": pick.episode_id,
                            "turn": pick.turn,
                            "agent": pick.agent,
                            "chosen_candidate": pick.chosen,
                            "rejected_candidate": other,
                            "supervisor": pick.supervisor,
                            "rationale": pick.rationale,
                        }
                    )
    return records, turns


@dataclass(frozen=True)
class CandidateStats:
    """How one candidate of one agent fared.

    Attributes:
        agent: The agent whose lines it proposed.
        candidate: Its id.
        offered: Valid choices it took part in.
        chosen: Of those, the ones it won.
        elo: Its Elo rating after every choice.
    """

    agent: str
    candidate: str
    offered: int
    chosen: int
    elo: float

    @property
    def share(self) -> float:
        """The fraction of its choices it won."""
        return self.chosen / self.offered if self.offered else 0.0


def elo_ratings(
    choices: Sequence[Choice], *, k: float = ELO_K, start: float = ELO_START
) -> dict[tuple[str, str], float]:
    """Elo ratings by (agent, candidate id) after the valid `choices`, in their order.

    Each choice is a game won by the chosen candidate against each rejected one, in the
    rejected candidates' scenario order, each game updating both ratings at once:
    E = 1 / (1 + 10 ** ((R_loser - R_winner) / 400)), the winner gains k * (1 - E) and the
    loser loses as much. Deterministic: the same choices give the same ratings.
    """
    ratings: dict[tuple[str, str], float] = {}
    for choice in choices:
        for cand in choice.proposals:
            ratings.setdefault((choice.agent, cand), start)
        if not choice.valid:
            continue
        winner = (choice.agent, choice.chosen)
        for other in choice.rejected:
            loser = (choice.agent, other)
            expected = 1.0 / (1.0 + 10.0 ** ((ratings[loser] - ratings[winner]) / 400.0))
            ratings[winner] += k * (1.0 - expected)
            ratings[loser] -= k * (1.0 - expected)
    return ratings


def selection_table(choices: Sequence[Choice]) -> list[CandidateStats]:
    """Per (agent, candidate), in order of first appearance: valid choices offered, won, and
    the Elo rating after all of them."""
    offered: defaultdict[tuple[str, str], int] = defaultdict(int)
    won: defaultdict[tuple[str, str], int] = defaultdict(int)
    for choice in choices:
        for cand in choice.proposals:
            offered[(choice.agent, cand)] += choice.valid
        won[(choice.agent, choice.chosen)] += choice.valid
    ratings = elo_ratings(choices)
    return [
        CandidateStats(agent, cand, offered[(agent, cand)], won[(agent, cand)], elo)
        for (agent, cand), elo in ratings.items()
    ]


@dataclass(frozen=True)
class SessionRating:
    """One judge's verdicts on whole episodes.

    Attributes:
        judge: The judge.
        rubric: Its rubric id.
        episodes: Episodes it rated.
        valid: Verdicts that parsed.
        score: Mean score of the valid verdicts (None when none has one).
        dimensions: Mean raw value of each dimension over the valid verdicts.
    """

    judge: str
    rubric: str
    episodes: int
    valid: int
    score: float | None
    dimensions: dict[str, float]


def session_ratings(db: str | Path, chosen: EpisodeFilter | None = None) -> list[SessionRating]:
    """The whole-episode verdicts of the chosen episodes, per judge (in order of appearance).

    Raises:
        UserError: a bad filter.
    """
    rows: defaultdict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    with RunLog(db) as log:
        for episode in select_episodes(log, chosen or EpisodeFilter()):
            for j in log.judgments(episode["episode_id"]):
                if j["turn_idx"] is None:
                    rows[(str(j["judge"]), str(j["rubric"]))].append(j)
    ratings = []
    for (judge, rubric), verdicts in rows.items():
        valid = [j for j in verdicts if j["valid"]]
        scores = [float(j["score"]) for j in valid if j["score"] is not None]
        values: defaultdict[str, list[float]] = defaultdict(list)
        for j in valid:
            for key, value in (j["parsed"] or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    values[key].append(float(value))
        ratings.append(
            SessionRating(
                judge=judge,
                rubric=rubric,
                episodes=len(verdicts),
                valid=len(valid),
                score=sum(scores) / len(scores) if scores else None,
                dimensions={k: sum(v) / len(v) for k, v in values.items()},
            )
        )
    return ratings


@dataclass(frozen=True)
class CandidateReport:
    """What `personae analyze candidates` prints.

    Attributes:
        choices: Every choice read (valid or not).
        candidates: Per (agent, candidate): offered, chosen, Elo.
        sessions: The session ratings of the same episodes.
    """

    choices: list[Choice]
    candidates: list[CandidateStats]
    sessions: list[SessionRating]

    @property
    def invalid(self) -> int:
        """Choices the supervisor did not make (the first proposal was said)."""
        return sum(not c.valid for c in self.choices)

    @property
    def episodes(self) -> int:
        """Episodes with at least one choice."""
        return len({c.episode_id for c in self.choices})

    def as_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return {
            "choices": len(self.choices),
            "invalid": self.invalid,
            "episodes": self.episodes,
            "candidates": [{**s.__dict__, "share": s.share} for s in self.candidates],
            "sessions": [s.__dict__ for s in self.sessions],
        }


def candidate_report(db: str | Path, chosen: EpisodeFilter | None = None) -> CandidateReport:
    """Selection counts and Elo ratings of every agent's candidates, and the session ratings,
    over the chosen episodes (default: every complete one).

    Raises:
        UserError: a bad filter, or no turn of the chosen episodes was chosen among candidates.
    """
    choices = candidate_choices(db, chosen)
    if not choices:
        raise UserError(
            "no turn of these episodes was chosen among candidates",
            where=str(db),
            fix="run a scenario whose agents have candidates and a supervisor (e.g. "
            "counseling_candidates), or widen --status/--where",
        )
    return CandidateReport(choices, selection_table(choices), session_ratings(db, chosen))
