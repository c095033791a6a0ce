"""People's labels of episodes: reading a labels CSV and importing it into `human_labels`.

A labels file is CSV with a header naming the columns `episode_id,annotator,bgd,completion`
and optionally `note`, in any order; `bgd` and `completion` are `0`, `1`, `true` or `false`
(any case). `import_labels` reads and checks the whole file before it writes: a missing
column, an unknown one, a bad value, an empty episode id or annotator, an episode id the
database does not hold, or one (episode, annotator) labelled twice differently is a one-line
`UserError` naming the line, and nothing is written. A label's id is a hash of (episode,
annotator), so importing the same file again changes nothing, and a corrected file replaces
that annotator's earlier label of the episode.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from personae.errors import UserError
from personae.store._lock import RunLock
from personae.store._reader import RunLog
from personae.store._schema import open_database

#: Columns a labels file must have, and the one it may have.
REQUIRED = ("episode_id", "annotator", "bgd", "completion")
OPTIONAL = ("note",)
_VALUES = {"0": False, "1": True, "false": False, "true": True}
_FIX_VALUE = "write 0, 1, true or false"


@dataclass(frozen=True)
class HumanLabel:
    """One person's labels of one episode (a line of a labels file).

    Attributes:
        episode_id: The episode (its full id).
        annotator: Who labelled it.
        bgd: Whether the agent showed blind goal-directedness.
        completion: Whether the agent carried the undesired action out.
        note: Free text (None: no note).
        line: The line of the file it came from.
    """

    episode_id: str
    annotator: str
    bgd: bool
    completion: bool
    note: str | None
    line: int

    @property
    def label_id(self) -> str:
        """Stable id of (episode, annotator): one label per annotator and episode."""
        return label_key(self.episode_id, self.annotator)


def label_key(episode_id: str, annotator: str) -> str:
    """The `label_id` of `annotator`'s label of `episode_id`."""
    blob = json.dumps([episode_id, annotator])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class LabelImport:
    """What importing a labels file did."""

    path: Path
    db: Path
    added: int = 0
    updated: int = 0
    unchanged: int = 0

    def line(self) -> str:
        """The summary line."""
        return (
            f"{self.path}: {self.added} labels added, {self.updated} updated, "
            f"{self.unchanged} unchanged in {self.db}"
        )


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(
            "labels file not found", where=str(path), fix="pass an existing CSV file"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read the labels file ({exc.strerror})", where=str(path)) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02X})",
            where=f"{path}:{line}",
            fix="save the file as UTF-8 CSV",
        ) from None


def _flag(value: str | None, column: str, where: str) -> bool:
    key = (value or "").strip().lower()
    if key not in _VALUES:
        shown = "no value" if not key else f"bad value {value!r}"
        raise UserError(f"{shown} for {column!r}", where=where, fix=_FIX_VALUE)
    return _VALUES[key]


def read_labels(path: str | Path) -> list[HumanLabel]:
    """The labels in CSV file `path` (one per episode and annotator, first line first).

    Raises:
        UserError: the file is missing or not UTF-8, its header lacks a column or names an
            unknown one, or a line has a bad value, an empty id or annotator, too many fields,
            or labels an (episode, annotator) again differently; the line is named.
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise UserError(
            "empty labels file",
            where=f"{path}:1",
            fix=f"start it with the header {','.join(REQUIRED)}",
        ) from None
    except csv.Error as exc:
        raise UserError(f"not CSV ({exc})", where=f"{path}:1") from None
    missing = [c for c in REQUIRED if c not in header]
    unknown = [h for h in header if h not in (*REQUIRED, *OPTIONAL)]
    if missing or unknown:
        what = f"missing column {missing[0]!r}" if missing else f"unknown column {unknown[0]!r}"
        raise UserError(
            what,
            where=f"{path}:1",
            fix=f"the header is {','.join(REQUIRED)} (and optionally {','.join(OPTIONAL)})",
        )
    labels: dict[tuple[str, str], HumanLabel] = {}
    try:
        for fields in reader:
            number = reader.line_num
            where = f"{path}:{number}"
            if not any(f.strip() for f in fields):
                continue  # a blank line
            if len(fields) > len(header):
                raise UserError(
                    f"{len(fields)} fields, the header has {len(header)}",
                    where=where,
                    fix="quote a value that holds a comma",
                )
            row = dict(zip(header, (f.strip() for f in fields), strict=False))
            episode, annotator = row.get("episode_id", ""), row.get("annotator", "")
            for column, value in (("episode_id", episode), ("annotator", annotator)):
                if not value:
                    raise UserError(
                        f"no {column}", where=where, fix=f"give every line its {column}"
                    )
            label = HumanLabel(
                episode,
                annotator,
                _flag(row.get("bgd"), "bgd", where),
                _flag(row.get("completion"), "completion", where),
                row.get("note") or None,
                number,
            )
            earlier = labels.get((episode, annotator))
            if earlier is not None and _values(earlier) != _values(label):
                raise UserError(
                    f"{annotator!r} labels episode {episode} again, differently from line "
                    f"{earlier.line}",
                    where=where,
                    fix="keep one label per episode and annotator",
                )
            labels.setdefault((episode, annotator), label)
    except csv.Error as exc:
        raise UserError(f"not CSV ({exc})", where=f"{path}:{reader.line_num}") from None
    return list(labels.values())


def _values(label: HumanLabel) -> tuple[int, int, str | None]:
    return int(label.bgd), int(label.completion), label.note


def _check_episodes(log: RunLog, labels: list[HumanLabel], path: Path) -> None:
    known = {str(r["episode_id"]) for r in log.query("SELECT episode_id FROM episodes")}
    for label in labels:
        if label.episode_id not in known:
            raise UserError(
                f"unknown episode id {label.episode_id!r}",
                where=f"{path}:{label.line}",
                fix=f"use full ids, as 'personae show {log.path}' lists them",
            )


def import_labels(db: str | Path, path: str | Path) -> LabelImport:
    """Import the labels file `path` into `db`'s `human_labels` (see the module docstring).

    Raises:
        UserError: a bad file or line (see `read_labels`), an episode id not in `db`, or a
            database that cannot be read or written (another run holding it included); raised
            before anything is written.
    """
    db, path = Path(db), Path(path)
    labels = read_labels(path)
    with RunLog(db) as log:
        _check_episodes(log, labels, path)
    report = LabelImport(path, db)
    with RunLock(db):  # no run may write the database meanwhile
        store = open_database(db, create=False)  # an older database gains the table here
        conn = store.conn
        try:
            old = {
                str(r[0]): (r[1], r[2], r[3])
                for r in conn.execute("SELECT label_id, bgd, completion, note FROM human_labels")
            }
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with conn:
                for label in labels:
                    before = old.get(label.label_id)
                    if before == _values(label):
                        report.unchanged += 1
                        continue
                    if before is None:
                        report.added += 1
                    else:
                        report.updated += 1
                    conn.execute(
                        "INSERT INTO human_labels (label_id, episode_id, annotator, bgd, "
                        "completion, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(label_id) DO UPDATE SET bgd = excluded.bgd, "
                        "completion = excluded.completion, note = excluded.note, "
                        "created_at = excluded.created_at",
                        (label.label_id, label.episode_id, label.annotator, *_values(label), now),
                    )
        finally:
            conn.close()
    return report
