"""Seeds: the run seeds users give, and per-call seeds derived from them.

A run seed is an integer in [0, 2**63): it is stored in SQLite, whose integers are signed 64-bit,
so a larger one cannot be saved. `Seed` is that type for pydantic specs (strict: `true` or
`"3"` are not seeds); `parse_seed` and `check_seed` apply the same rule to command-line text and
Python values, raising a one-line `UserError`. Per-call seeds are derived from (run seed,
episode, turn, agent), so every call is reproducible from the log and no two calls share a seed
by accident.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from personae.errors import UserError

#: Seeds are below this (SQLite stores signed 64-bit integers).
SEED_LIMIT = 2**63

_RANGE = f"a seed is a whole number from 0 to {SEED_LIMIT - 1} (2**63 - 1)"


def _in_range(value: int) -> int:
    if not 0 <= value < SEED_LIMIT:
        raise PydanticCustomError("seed_range", f"{_RANGE}, got {value}")
    return value


#: A run seed in a pydantic spec: a strict int in [0, 2**63).
Seed = Annotated[int, Field(strict=True), AfterValidator(_in_range)]


def check_seed(value: object, where: str = "seed") -> int:
    """`value` as a run seed, or a `UserError` naming `where`.

    Args:
        value: An int in [0, 2**63) (bools are refused).
        where: The option or key the value came from, e.g. `--seed`.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"bad seed {value!r}: {_RANGE}", where=where, fix="write e.g. 0 or 42")
    if not 0 <= value < SEED_LIMIT:
        raise UserError(f"seed {value} is out of range: {_RANGE}", where=where, fix="use e.g. 42")
    return value


def parse_seed(text: str, where: str = "--seed") -> int:
    """A run seed from command-line text (decimal digits), or a `UserError` naming `where`."""
    stripped = text.strip()
    if not stripped.isdigit() or not stripped.isascii():
        raise UserError(f"bad seed {text!r}: {_RANGE}", where=where, fix="write digits, e.g. 42")
    return check_seed(int(stripped), where)


def derive_seed(run_seed: int, episode_id: str, turn: int, agent: str, attempt: int = 0) -> int:
    """A 31-bit seed that depends on every argument."""
    blob = f"{run_seed}|{episode_id}|{turn}|{agent}|{attempt}".encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") & 0x7FFFFFFF
