"""Training data from logged episodes: SFT conversations and DPO preference pairs.

Both are built from one role's own view of an episode: the agent is rebuilt from the stored
scenario and persona and renders the conversation as chat messages (its system prompt, the
others' lines as `user`, its own as `assistant`), exactly as it would prompt an instruct model.
Only what the agent could see goes in: lines whose audience includes it (the same audience rule
as its live prompts), no `hidden_json` and no side-table row of any agent, and other agents'
private prompts never appear because only the role's own system prompt is used.

SFT: one record per (episode, agent of ROLE), `{"messages": [...], "episode_id", "agent"}`,
ending at the agent's last line (OpenAI chat format, as TRL and axolotl read it).

DPO: sibling continuations of the same prompt are the forks of one parent at one turn K plus
the parent itself. When turn K is spoken by an agent of ROLE, each pair of siblings whose
scores differ gives `{"prompt": [...], "chosen": [assistant], "rejected": [assistant]}` (TRL's
conversational preference format), the prompt rendered from the parent's view of turns
0..K-1. A sibling's score comes from the `judgments` table: a judge's verdict on its turn K,
else on the whole episode (`score`: the mean of the rubric's dimensions; `score_key` picks one
dimension of the parsed verdict instead; `judge` picks one judge). Siblings without a score give
no pairs: without judge scores there is no preference, so no pairs are made. A turn chosen by a
supervisor among candidates' proposals is a preference too: chosen over each rejected proposal
(`personae.export._candidates`).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personae.agents import Agent, Utterance, visible_history
from personae.errors import UserError
from personae.export._select import EpisodeFilter, select_episodes
from personae.replay import (
    EpisodeSetup,
    is_scenario_run,
    load_setup,
    scenario_of_run,
    utterances,
)
from personae.runner import build_agents
from personae.scenario import condition_graph_options
from personae.store import RunLog


def _chat_agents(setup: EpisodeSetup) -> dict[str, Agent]:
    """Every agent of the episode, rendering chat messages (labels come from all of them),
    given what it was given then (a course session's memory and goal) and briefed by the
    episode's graph kind as the graph briefed them."""
    scenario, plan = setup.scenario, setup.plan
    agents = build_agents(scenario, plan.personas, {}, render="chat", context=plan.context)
    scenario.graph_kind(condition_graph_options(scenario, plan.condition)).brief(agents)
    return agents


def _check_role(log: RunLog, role: str) -> None:
    roles: set[str] = set()
    other_kinds: set[str] = set()
    for run in log.runs():
        if is_scenario_run(run):
            roles.update(a.role for a in scenario_of_run(log, run["run_id"]).agents.values())
        else:
            other_kinds.add(str(run["scenario"]))
    if role in roles:
        return
    logged = {r["role"] for r in log.query("SELECT DISTINCT role FROM turns")}
    if role in logged and other_kinds:
        raise UserError(
            f"the {role!r} turns here come from runs that are not conversation scenarios "
            f"({', '.join(sorted(other_kinds))}); sft/dpo export rebuilds agents from a scenario",
            where=f"{log.path}: --role",
            fix="export them as a flat table with --format jsonl or csv",
        )
    raise UserError(
        f"no agent has the role {role!r} in this database",
        where=f"{log.path}: --role",
        fix=f"roles here: {', '.join(sorted(roles)) or '(none)'}",
    )


def _scenario_episodes(log: RunLog, chosen: EpisodeFilter | None) -> list[dict[str, Any]]:
    """Chosen episodes of runs started from a conversation scenario (others cannot be rebuilt)."""
    runs = {r["run_id"] for r in log.runs() if is_scenario_run(r)}
    return [e for e in select_episodes(log, chosen or EpisodeFilter()) if e["run_id"] in runs]


def _messages(agent: Agent, history: Sequence[Utterance]) -> list[dict[str, str]]:
    """The agent's chat messages over the lines it could see (no context window: the whole
    episode as it heard it)."""
    seen = visible_history(history, agent.name)
    return [{"role": m.role, "content": m.content} for m in agent.render_messages(seen)]


def sft_conversations(
    db: str | Path, role: str, chosen: EpisodeFilter | None = None
) -> list[dict[str, Any]]:
    """One chat conversation per (episode, agent of `role`), from that agent's own view.

    Args:
        db: The run database.
        role: A role present in the database (e.g. `client`, `counselor`).
        chosen: Which episodes (default: every complete episode).

    Raises:
        UserError: unknown role or a bad filter.
    """
    records: list[dict[str, Any]] = []
    with RunLog(db) as log:
        _check_role(log, role)
        for episode in _scenario_episodes(log, chosen):
            setup = load_setup(log, episode["episode_id"])
            agents = _chat_agents(setup)
            history = utterances(log.turns(setup.episode_id), agents)
            for name, agent in agents.items():
                if agent.role != role:
                    continue
                messages = _messages(agent, history)
                while messages and messages[-1]["role"] != "assistant":
                    messages.pop()
                if len(messages) < 2:
                    continue  # the agent never spoke
                records.append(
                    {"messages": messages, "episode_id": setup.episode_id, "agent": name}
                )
    return records


@dataclass
class DpoExport:
    """DPO pairs and what was found on the way.

    Attributes:
        pairs: The preference records.
        groups: Sibling groups (a parent and its forks at one turn) whose turn is ROLE's.
        unscored: Groups in which fewer than two siblings had a score.
        candidate_turns: ROLE's turns chosen among candidates that gave pairs.
    """

    pairs: list[dict[str, Any]] = field(default_factory=list)
    groups: int = 0
    unscored: int = 0
    candidate_turns: int = 0


def _score(
    judgments: Sequence[dict[str, Any]], fork_turn: int, key: str, judge: str | None
) -> float | None:
    def number(row: dict[str, Any]) -> float | None:
        if not row["valid"] or (judge is not None and row["judge"] != judge):
            return None
        value = row["score"] if key == "score" else (row["parsed"] or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    for wanted in (fork_turn, None):
        found = [n for r in judgments if r["turn_idx"] == wanted and (n := number(r)) is not None]
        if found:
            return sum(found) / len(found)
    return None


def dpo_pairs(
    db: str | Path,
    role: str,
    chosen: EpisodeFilter | None = None,
    *,
    score_key: str = "score",
    judge: str | None = None,
) -> DpoExport:
    """Preference pairs from sibling forks of the same turn, ranked by judge scores, then
    from the supervisors' choices among candidates on ROLE's lines (`candidate_pairs`).

    Args:
        db: The run database.
        role: The role whose line at the fork turn is compared.
        chosen: Which episodes may be siblings (default: every complete episode).
        score_key: `score` (a judgment's mean score) or a dimension of the parsed verdict.
        judge: Only this judge's verdicts (default: every judge's, averaged); for choices
            among candidates, only this supervisor's.

    Raises:
        UserError: unknown role or a bad filter.
    """
    from personae.export._candidates import candidate_pairs  # it builds on this module

    result = DpoExport()
    with RunLog(db) as log:
        _check_role(log, role)
        episodes = {e["episode_id"]: e for e in _scenario_episodes(log, chosen)}
        groups: defaultdict[tuple[str, int], list[str]] = defaultdict(list)
        for e in episodes.values():
            if e.get("parent_episode_id") and e.get("fork_turn") is not None:
                groups[(e["parent_episode_id"], int(e["fork_turn"]))].append(e["episode_id"])
        for (parent_id, k), forks in sorted(groups.items()):
            parent = load_setup(log, parent_id)
            parent_turns = log.turns(parent_id)
            speaker = next((t for t in parent_turns if t.idx == k), None)
            if speaker is None or speaker.role != role:
                continue
            result.groups += 1
            members = ([parent_id] if parent_id in episodes else []) + sorted(forks)
            scored: list[tuple[float, str, str]] = []
            for member in members:
                turns = parent_turns if member == parent_id else log.turns(member)
                line = next((t for t in turns if t.idx == k), None)
                score = _score(log.judgments(member), k, score_key, judge)
                if line is not None and score is not None and line.agent == speaker.agent:
                    scored.append((score, member, line.text))
            if len(scored) < 2:
                result.unscored += 1
                continue
            agents = _chat_agents(parent)
            prompt = _messages(
                agents[speaker.agent], utterances([t for t in parent_turns if t.idx < k], agents)
            )
            scored.sort(key=lambda s: -s[0])
            for better, worse in itertools.combinations(scored, 2):
                if better[0] == worse[0] or better[2] == worse[2]:
                    continue
                result.pairs.append(
                    {
                        "prompt": prompt,
                        "chosen": [{"role": "assistant", "content": better[2]}],
                        "rejected": [{"role": "assistant", "content": worse[2]}],
                        "score_chosen": better[0],
                        "score_rejected": worse[0],
                        "parent_episode_id": parent_id,
                        "fork_turn": k,
                        "chosen_episode_id": better[1],
                        "rejected_episode_id": worse[1],
                    }
                )
    chosen_among, result.candidate_turns = candidate_pairs(db, role, chosen, judge=judge)
    result.pairs.extend(chosen_among)
    return result
