"""Database files and folders that cannot be used: each is one line, exit 2, nothing written;
and valid databases on read-only media stay readable."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _mounts import remount, tmpfs

import personae
from personae.cli import main
from personae.errors import UserError
from personae.store import RunLog, check_database, open_database


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def valid_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run database (a few pages long), to copy and damage."""
    db = tmp_path_factory.mktemp("valid") / "valid.db"
    personae.run("counseling_cbt", backend="scripted", episodes=6, db=db)
    return db


def _edit(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql)
    conn.execute("PRAGMA journal_mode=DELETE")  # fold the WAL back in: a single file again
    conn.close()


@pytest.fixture
def readonly_folder(tmp_path: Path, valid_db: Path) -> Iterator[Path]:
    """A read-only folder holding a copy of `valid_db` as `run.db`.

    As root (CI) chmod does not stop writes, so this is a tmpfs remounted read-only; as another
    user a chmod-ed folder is just as real.
    """
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        (folder / "run.db").write_bytes(valid_db.read_bytes())
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    with tmpfs(tmp_path / "media", "4m") as folder:
        (folder / "run.db").write_bytes(valid_db.read_bytes())
        remount(folder, "ro")
        yield folder


# -- read-only media (the folder cannot be written) -----------------------------------------


def test_a_database_on_read_only_media_can_be_read(
    readonly_folder: Path, valid_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = readonly_folder / "run.db"
    before = _tree(readonly_folder)
    check_database(db)
    with RunLog(db) as log, RunLog(valid_db) as original:
        assert log.summary() == original.summary()
        first = log.episodes()[0]["episode_id"]
        assert log.turns(first) == original.turns(first)
    main_exit: list[object] = []
    try:
        main(["show", str(db)])
    except SystemExit as exc:  # typer exits 0 through SystemExit in standalone mode
        main_exit.append(exc.code)
    assert main_exit in ([], [0])
    out = capsys.readouterr().out
    assert "6 episodes (6 complete, 0 failed)" in out
    assert _tree(readonly_folder) == before  # no -wal/-shm could be (or was) made


def test_running_into_read_only_media_is_one_line_and_writes_nothing(
    readonly_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(readonly_folder)
    for db, words in (
        (readonly_folder / "run.db", "the database is read-only"),
        (readonly_folder / "new.db", "is not writable"),
    ):
        code, out, err = _main(
            ["run", "counseling_cbt", "--backend", "scripted", "--episodes", "1", "--db", str(db)],
            capsys,
        )
        (line,) = err.strip().splitlines()
        assert code == 2 and line.startswith(f"error: {db}: ") and words in line, line
        assert "Traceback" not in out + err
        with pytest.raises(UserError, match=words):
            open_database(db, create=True)
    assert _tree(readonly_folder) == before


# -- unusable database files and paths: one line, exit 2, nothing created or changed --------


def _truncated(tmp: Path, valid: Path) -> Path:
    db = tmp / "truncated.db"
    data = valid.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    return db


def _garbage(tmp: Path, valid: Path) -> Path:
    db = tmp / "garbage.db"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 32)
    return db


def _interrupted(tmp: Path, valid: Path) -> Path:
    # what a creation killed half-way leaves: some tables, no meta rows yet
    db = tmp / "interrupted.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY)")
    conn.close()
    return db


def _copy(tmp: Path, valid: Path, name: str, sql: str) -> Path:
    db = tmp / name
    db.write_bytes(valid.read_bytes())
    _edit(db, sql)
    return db


def _bad_version(tmp: Path, valid: Path) -> Path:
    sql = "UPDATE meta SET value = 'v2-beta' WHERE key = 'schema_version'"
    return _copy(tmp, valid, "bad_version.db", sql)


def _no_version(tmp: Path, valid: Path) -> Path:
    return _copy(tmp, valid, "no_version.db", "DELETE FROM meta WHERE key = 'schema_version'")


def _no_turns(tmp: Path, valid: Path) -> Path:
    return _copy(tmp, valid, "no_turns.db", "DROP TABLE turns")


def _folder(tmp: Path, valid: Path) -> Path:
    (tmp / "a folder").mkdir()
    return tmp / "a folder"


def _under_a_file(tmp: Path, valid: Path) -> Path:
    (tmp / "notes.txt").write_text("a file, not a folder\n")
    return tmp / "notes.txt" / "sub" / "run.db"


def _in_proc(tmp: Path, valid: Path) -> Path:
    return Path("/proc") / f"personae-test-{os.getpid()}.db"


def _device(tmp: Path, valid: Path) -> Path:
    return Path("/dev/null")


BAD: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "truncated copy": (_truncated, "damaged database: the file is truncated"),
    "garbage after the header": (_garbage, "damaged database"),
    "interrupted creation": (_interrupted, "incomplete database: its creation was interrupted"),
    "non-integer schema_version": (_bad_version, "schema_version is 'v2-beta', not a whole"),
    "no schema_version": (_no_version, "damaged database: no schema_version"),
    "a table missing": (_no_turns, "damaged database: tables missing: turns"),
    "a folder": (_folder, "this is a folder, not a database file"),
    "under a regular file": (_under_a_file, "notes.txt is a file, not a folder"),
    "in /proc": (_in_proc, "'proc', a kernel file system"),
    "a device": (_device, "not a regular file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_unusable_db_path_is_one_line_exit_2_and_nothing_is_written(
    case: str, tmp_path: Path, valid_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, words = BAD[case]
    db = make(tmp_path, valid_db)
    before = _tree(tmp_path)
    code, out, err = _main(
        ["run", "counseling_cbt", "--backend", "scripted", "--episodes", "1", "--db", str(db)],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {db}: ") and words in lines[0], lines[0]
    assert " — " in lines[0]  # says how to fix it
    assert "Traceback" not in out + err
    assert _tree(tmp_path) == before
    assert not _in_proc(tmp_path, valid_db).exists()
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        open_database(db, create=True)
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        check_database(db, for_writing=True)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "case",
    ["truncated copy", "garbage after the header", "non-integer schema_version", "a folder"],
)
def test_reading_an_unusable_db_is_one_line_exit_2(
    case: str, tmp_path: Path, valid_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, words = BAD[case]
    db = make(tmp_path, valid_db)
    code, out, err = _main(["show", str(db)], capsys)
    (line,) = err.strip().splitlines()
    assert code == 2 and words in line, line
    assert "Traceback" not in out + err
    with pytest.raises(UserError, match=words):
        RunLog(db)
