"""Shards: a deterministic split of a study's plan, for running one plan in several processes.

`Shard(K, N)` holds the planned episodes whose id hashes to K (1-based) of N. The split depends
on nothing but the episode id, so ids — and which shard holds an id — are the same whatever
process plans them, and the N shards of a plan partition it. A shard is only a filter on the
plan: the one runner (`execute`) runs it into its own database, and `personae merge` (or the Ray
executor) puts the shard databases together again. Studies in stages (a teaching experiment)
cannot be split: a later stage needs the outcomes of every episode of the earlier ones.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from personae.errors import UserError
from personae.scenario import EpisodePlan
from personae.store import RunLog

_SHAPE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def shard_number(episode_id: str, count: int) -> int:
    """The shard (1..count) that holds `episode_id`: its SHA-256 modulo `count`."""
    digest = hashlib.sha256(episode_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` of a plan, less the episodes in `skip` (complete elsewhere:
    in the database this shard will be merged into).

    Attributes:
        index: 1..count.
        count: How many shards the plan is split into.
        skip: Episode ids not to run although they hash to this shard.
    """

    index: int
    count: int
    skip: Collection[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count} is outside 1..{self.count}")

    @property
    def label(self) -> str:
        """`K/N`, as given on the command line and stored in `runs.shard`."""
        return f"{self.index}/{self.count}"

    def holds(self, plan: EpisodePlan) -> bool:
        """Whether this shard runs `plan`."""
        if plan.episode_id in self.skip:
            return False
        return self.count == 1 or shard_number(plan.episode_id, self.count) == self.index

    def select(self, plans: Sequence[EpisodePlan]) -> list[EpisodePlan]:
        """The plans this shard runs, in plan order.

        Raises:
            UserError: the plan has several stages and would be split into several shards.
        """
        if self.count > 1 and len({p.stage for p in plans}) > 1:
            raise UserError(
                "a study in stages (e.g. a teaching experiment) cannot be split into shards: "
                "each stage needs the outcomes of every episode before it",
                where=f"--shard {self.label}",
                fix="run it in one process (without --shard or --executor ray)",
            )
        return [p for p in plans if self.holds(p)]

    @classmethod
    def parse(cls, text: str, *, where: str = "--shard") -> Shard:
        """`K/N` (1 ≤ K ≤ N) as a shard.

        Raises:
            UserError: malformed, or K outside 1..N.
        """
        match = _SHAPE.match(text)
        if match is None:
            raise UserError(
                f"expected K/N (shard K of N), got {text!r}",
                where=f"{where} {text}",
                fix="e.g. --shard 2/4, or in a SLURM array job (--array=1-N) "
                "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
            )
        index, count = int(match[1]), int(match[2])
        if count < 1 or not 1 <= index <= count:
            hint = " (SLURM array ids start where --array starts: use --array=1-N)"
            raise UserError(
                f"shard {index} is outside 1..{count}" if count else "N must be at least 1",
                where=f"{where} {text}",
                fix="give K/N with 1 ≤ K ≤ N" + (hint if index == 0 else ""),
            )
        return cls(index, count)


def stored_shard(db: Path) -> Shard | None:
    """The shard a database holds: the one every run in it ran (None: several, or none).

    A shard database resumed with `personae run --resume DB` stays that shard; a database
    merged from several shards resumes as the whole plan.
    """
    with RunLog(db) as log:
        labels = {run.get("shard") for run in log.runs()}
    if len(labels) != 1 or (label := labels.pop()) is None:
        return None
    return Shard.parse(str(label), where=f"{db}: runs.shard")
