"""Reading JSONL input files: one JSON object per line, blank lines skipped, and every problem a
one-line `UserError` naming `FILE:LINE`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from personae.errors import UserError


def jsonl_objects(path: Path, *, fix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of `path`.

    Args:
        path: The file (must exist).
        fix: What a line that is not a JSON object should be, for the error's fix.

    Raises:
        UserError: a line that is not UTF-8, not JSON, or not a JSON object.
    """
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is harmless
            except UnicodeDecodeError as exc:
                raise UserError(
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02X} cannot be decoded)",
                    where=where,
                    fix="save it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)",
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"malformed JSON line: {exc.msg} (column {exc.colno})",
                    where=where,
                    fix="each line must be one JSON object",
                ) from None
            if not isinstance(record, dict):
                raise UserError("a JSONL line must be a JSON object", where=where, fix=fix)
            yield number, record
