"""Per-call seeds derived from (run seed, episode, turn, agent), so every call is reproducible
from the log and no two calls share a seed by accident."""

from __future__ import annotations

import hashlib


def derive_seed(run_seed: int, episode_id: str, turn: int, agent: str, attempt: int = 0) -> int:
    """A 31-bit seed that depends on every argument."""
    blob = f"{run_seed}|{episode_id}|{turn}|{agent}|{attempt}".encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") & 0x7FFFFFFF
