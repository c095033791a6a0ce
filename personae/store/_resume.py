"""Re-running into an existing database: skip complete episodes, restart the rest cleanly."""

from __future__ import annotations

from collections.abc import Sequence

import sqlite_utils


def prepare_rerun(db: sqlite_utils.Database, episode_ids: Sequence[str]) -> set[str]:
    """Return the ids among `episode_ids` already complete in `db`.

    Turns, calls, judgments and environment steps of the other (pending, running or failed)
    episodes are deleted in one transaction, so those episodes restart from turn 0 with no
    duplicated rows.
    """
    done: set[str] = set()
    partial: list[str] = []
    for start in range(0, len(episode_ids), 500):
        chunk = list(episode_ids[start : start + 500])
        marks = ",".join("?" for _ in chunk)
        for episode_id, status in db.execute(
            f"SELECT episode_id, status FROM episodes WHERE episode_id IN ({marks})", chunk
        ).fetchall():
            (done.add(episode_id) if status == "complete" else partial.append(episode_id))
    with db.conn:
        for episode_id in partial:
            db.execute("DELETE FROM turns WHERE episode_id = ?", [episode_id])
            db.execute("DELETE FROM llm_calls WHERE episode_id = ?", [episode_id])
            db.execute("DELETE FROM judgments WHERE episode_id = ?", [episode_id])
            db.execute("DELETE FROM env_steps WHERE episode_id = ?", [episode_id])
    return done
