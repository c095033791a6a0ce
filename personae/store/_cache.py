"""The opt-in response cache: identical requests (same backend, rendered prompt, sampling
params and seed) reuse a stored output instead of calling the model again.

The cache is its own personae database (default `response_cache.db` beside the run database),
so it serves any later run, whatever run database that run writes. Lookups use one read-only
connection (WAL lets it see committed writes); new entries are queued on a `TurnLogWriter`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from personae.backends import GenerationRequest, GenerationResult
from personae.store._schema import readonly_uri
from personae.store._writer import TurnLogWriter

#: File name of the default response cache, next to the run database.
CACHE_FILE = "response_cache.db"


def cache_key(backend_id: str, request: GenerationRequest) -> str:
    """Hash of everything that determines a reply."""
    blob = json.dumps(
        [backend_id, request.rendered(), request.params(), request.seed], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """Reads and writes the `response_cache` table of one run database."""

    def __init__(self, path: Path, writer: TurnLogWriter) -> None:
        self._conn = sqlite3.connect(readonly_uri(path), uri=True, check_same_thread=False)
        self._writer = writer
        self.hits = 0

    def get(self, key: str) -> GenerationResult | None:
        """The cached result for `key`, or None."""
        row = self._conn.execute(
            "SELECT output, finish_reason, prompt_tokens, completion_tokens "
            "FROM response_cache WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        self.hits += 1
        return GenerationResult(
            text=row[0], finish_reason=row[1], prompt_tokens=row[2], completion_tokens=row[3]
        )

    def put(self, key: str, backend_id: str, result: GenerationResult) -> None:
        """Queue `result` for storage under `key`."""
        self._writer.upsert(
            "response_cache",
            {
                "key": key,
                "backend": backend_id,
                "output": result.text,
                "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            },
        )

    def close(self) -> None:
        """Close the read connection."""
        self._conn.close()
