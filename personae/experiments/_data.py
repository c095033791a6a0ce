"""Teaching items: loading `Item`s (multiple-choice questions) from JSONL or CSV files.

Every item becomes a multiple-choice question: a question, its options, the index of the gold
option and, optionally, a human explanation. Records may give `options` with an `answer` (index,
letter or option text); a yes/no answer (`true`/`false`/`yes`/`no`, StrategyQA style, with
`facts` as the explanation); a number; or a GSM8K worked solution ending in `#### <number>`
(`<<a=b>>` calculator notes are removed, the solution becomes the explanation). Numeric answers
become four options: the gold number and three distractors derived deterministically from the
solution's intermediate results and simple slips. Problems are `UserError`s naming the file and
line.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from personae._jsonl import jsonl_objects
from personae.agents import Item
from personae.errors import UserError

_CALC = re.compile(r"<<[^>]*>>")
_CALC_RESULT = re.compile(r"<<[^=>]*=([^>]*)>>")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_YES = {"yes", "true"}
_NO = {"no", "false"}
_FORMAT_FIX = (
    "each record needs 'question' and 'answer' (with 'options', a yes/no value, a number, or a "
    "GSM8K solution ending in '#### N'); see the README's teacher-student section"
)


# -- numbers ---------------------------------------------------------------------------------


def parse_number(text: str) -> Decimal | None:
    """The number in `text` ("1,200", "$5", "-3.50"), or None."""
    match = _NUMBER.search(text.replace("$", ""))
    if not match:
        return None
    try:
        return Decimal(match.group().replace(",", ""))
    except InvalidOperation:
        return None


def format_number(value: Decimal) -> str:
    """A number as options show it: integers without decimals, others trimmed."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _stable(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def numeric_options(
    item_id: str, gold: Decimal, intermediates: Sequence[Decimal] = (), *, n: int = 4
) -> tuple[tuple[str, ...], int]:
    """Options for a numeric answer: the gold number and `n - 1` distractors, deterministic.

    Distractors are, in order of preference, intermediate results of the solution (the classic
    "stopped one step early" error), then slips: ±1, x2, ÷2, ±10, x10. The gold option's position
    depends only on the item id.

    Returns:
        The options and the gold option's index.
    """
    candidates: list[Decimal] = [v for v in intermediates if v != gold]
    slips = [gold + 1, gold - 1, gold * 2, gold / 2, gold + 10, gold - 10, gold * 10, gold + 2]
    candidates += [s for s in slips if gold < 0 or s >= 0]
    distractors: list[str] = []
    gold_text = format_number(gold)
    for value in candidates:
        text = format_number(value)
        if text != gold_text and text not in distractors:
            distractors.append(text)
        if len(distractors) == n - 1:
            break
    position = _stable(item_id) % n
    options = [*distractors[:position], gold_text, *distractors[position:]]
    return tuple(options), position


def gsm8k_solution(answer: str) -> tuple[Decimal, str, list[Decimal]] | None:
    """Split a GSM8K `answer` into (gold number, explanation, intermediate results), or None."""
    body, sep, final = answer.rpartition("####")
    if not sep:
        return None
    gold = parse_number(final)
    if gold is None:
        return None
    intermediates = [v for m in _CALC_RESULT.finditer(body) if (v := parse_number(m.group(1)))]
    explanation = " ".join(_CALC.sub("", body).split())
    return gold, explanation, intermediates


# -- records -> items --------------------------------------------------------------------------


def _options_field(record: Mapping[str, Any]) -> list[str] | None:
    raw = record.get("options", record.get("choices"))
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        return [o.strip() for o in raw.split("|")]
    if isinstance(raw, Mapping):  # {"A": "...", "B": "..."}
        return [str(v).strip() for _, v in sorted(raw.items())]
    if isinstance(raw, list):
        return [str(o).strip() for o in raw]
    raise ValueError("'options' must be a list or a '|'-separated string")


def _gold_index(answer: Any, options: Sequence[str]) -> int:
    if isinstance(answer, bool):
        raise ValueError("'answer' must be an option index, letter or text")
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and answer.strip() in options:
        index = options.index(answer.strip())
    elif isinstance(answer, str) and len(answer.strip().strip("()")) == 1:
        index = ord(answer.strip().strip("()").upper()) - ord("A")
    elif isinstance(answer, str) and answer.strip().isdigit():
        index = int(answer.strip())
    else:
        raise ValueError(f"answer {answer!r} is not one of the options, a letter or an index")
    if not 0 <= index < len(options):
        raise ValueError(f"answer {answer!r} is out of range for {len(options)} options")
    return index


def _explanation(record: Mapping[str, Any]) -> str | None:
    value = record.get("explanation")
    if not value and isinstance(record.get("facts"), list):  # StrategyQA
        value = " ".join(str(f) for f in record["facts"])
    text = " ".join(str(value).split()) if value else ""
    return text or None


def record_to_item(record: Mapping[str, Any], default_id: str) -> Item:
    """Build an `Item` from one record (see the module docstring for accepted shapes).

    Raises:
        ValueError: the record does not describe an item (the loader adds file and line).
    """
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("missing 'question'")
    if "answer" not in record and "label" not in record:
        raise ValueError("missing 'answer'")
    answer = record.get("answer", record.get("label"))
    item_id = str(record.get("id") or record.get("qid") or default_id)
    explanation = _explanation(record)
    options = _options_field(record)
    if options is not None:
        index = _gold_index(answer, options)
    elif isinstance(answer, bool) or (
        isinstance(answer, str) and answer.strip().lower() in _YES | _NO
    ):
        yes = answer if isinstance(answer, bool) else answer.strip().lower() in _YES
        options, index = ["yes", "no"], (0 if yes else 1)
    elif isinstance(answer, str) and (solution := gsm8k_solution(answer)) is not None:
        gold, worked, intermediates = solution
        explanation = explanation or worked or None
        options_t, index = numeric_options(item_id, gold, intermediates)
        options = list(options_t)
    elif (number := _number(answer)) is not None:
        options_t, index = numeric_options(item_id, number)
        options = list(options_t)
    else:
        raise ValueError(f"cannot read answer {answer!r}")
    return Item(
        id=item_id,
        question=" ".join(question.split()),
        options=tuple(options),
        answer=index,
        explanation=explanation,
    )


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if isinstance(value, str) and re.fullmatch(r"\s*\$?-?[\d,]+(\.\d+)?\s*", value):
        return parse_number(value)
    return None


# -- files -------------------------------------------------------------------------------------


def _records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from jsonl_objects(path, fix=_FORMAT_FIX)
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                yield number, {k.strip(): v for k, v in row.items() if k is not None}
    else:
        raise UserError(
            f"unsupported dataset format {suffix or '(no suffix)'!r}",
            where=str(path),
            fix="use a .jsonl or .csv file",
        )


def load_items(path: str | Path, *, limit: int | None = None) -> list[Item]:
    """Read items from a JSONL or CSV file (at most `limit`, in file order).

    Raises:
        UserError: missing file, unsupported format, malformed line, or a record that is not an
            item (the message names `file:line`), duplicate ids, or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("dataset file not found", where=str(path), fix="check the path")
    items: list[Item] = []
    seen: set[str] = set()
    for number, record in _records(path):
        if limit is not None and len(items) >= limit:
            break
        try:
            item = record_to_item(record, f"{path.stem}-{number}")
        except ValueError as exc:
            raise UserError(
                f"bad item: {_first_line(exc)}", where=f"{path}:{number}", fix=_FORMAT_FIX
            ) from None
        if item.id in seen:
            raise UserError(
                f"duplicate item id {item.id!r}", where=f"{path}:{number}", fix="make ids unique"
            )
        seen.add(item.id)
        items.append(item)
    if not items:
        raise UserError("dataset has no items", where=str(path), fix=_FORMAT_FIX)
    return items


def _first_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic ValidationError
        first = errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        return f"{loc}: {first['msg']}" if loc else str(first["msg"])
    return str(exc).splitlines()[0]
