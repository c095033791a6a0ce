"""`export --out` never damages the run database or overwrites a file unasked; `browse`
answers only requests addressed to localhost / 127.0.0.1 (no DNS rebinding)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import personae
from personae.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("export") / "run.db"
    personae.run("counseling_cbt", backend="scripted", episodes=2, db=db)
    return db


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "sft"])
@pytest.mark.parametrize("spelling", ["same", "relative", "symlink", "hardlink", "wal", "shm"])
def test_out_onto_the_database_is_refused_even_with_force(
    run_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
    spelling: str,
) -> None:
    db = tmp_path / "copy.db"
    db.write_bytes(run_db.read_bytes())
    out: Path
    if spelling == "same":
        out = db
    elif spelling == "relative":
        monkeypatch.chdir(tmp_path)
        out = Path("sub/../copy.db")
        (tmp_path / "sub").mkdir()
    elif spelling == "symlink":
        out = tmp_path / "link.jsonl"
        out.symlink_to(db)
    elif spelling == "hardlink":
        out = tmp_path / "hard.jsonl"
        os.link(db, out)
    else:
        out = Path(f"{db}-{spelling}")
    personae.RunLog(db).close()  # a reader's -wal/-shm files exist beforehand, as in real use
    before = _files(tmp_path)
    role = ["--role", "client"] if fmt == "sft" else []
    code, err = _main(["export", str(db), "-f", fmt, *role, "--out", str(out), "--force"], capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "run database" in line
    after = _files(tmp_path)
    assert after.keys() == before.keys()  # no output file
    for name in after.keys() - {"copy.db-shm"}:  # readers may touch the shared-memory index
        assert after[name] == before[name], name


def test_out_onto_an_existing_file_needs_force(
    run_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "turns.jsonl"
    out.write_text("keep me\n")
    code, err = _main(["export", str(run_db), "--out", str(out)], capsys)
    assert code == 2 and "--force" in err and out.read_text() == "keep me\n"
    code, err = _main(["export", str(run_db), "--out", str(out), "--force"], capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and "turns →" in err


def test_out_at_a_directory_is_refused(
    run_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _main(["export", str(run_db), "--out", str(tmp_path), "--force"], capsys)
    assert code == 2 and "directory" in err
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_no_file_and_no_folder(
    run_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "deeper" / "x.jsonl"
    code, err = _main(["export", str(run_db), "--where", "client.mood=sad", "-o", str(out)], capsys)
    assert code == 2 and "client.mood" in err
    assert list(tmp_path.iterdir()) == []


def test_export_into_new_folders_writes_the_whole_file(
    run_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "x.csv"
    code, _ = _main(["export", str(run_db), "-f", "csv", "-o", str(out)], capsys)
    assert code == 0
    assert out.read_text().count("\n") == 25  # header + 24 turns
    assert [p.name for p in out.parent.iterdir()] == ["x.csv"]  # no partial file left


# -- browse ------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def browsing(run_db: Path) -> Iterator[Callable[[str, str | None], tuple[int, bytes]]]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "personae", "browse", str(run_db), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                _get(port, "/", f"127.0.0.1:{port}")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        yield lambda path, host: _get(port, path, host.replace("PORT", str(port)) if host else None)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("host", ["127.0.0.1:PORT", "localhost:PORT", "localhost", "127.0.0.1"])
def test_browse_answers_loopback_hosts(
    browsing: Callable[[str, str | None], tuple[int, bytes]], run_db: Path, host: str
) -> None:
    status, body = browsing(f"/{run_db.stem}/turns.json?_shape=array", host)
    assert status == 200 and len(json.loads(body)) == 24


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:PORT",
        "evil.example",
        "localhost.evil.example:PORT",
        "127.0.0.1.nip.io:PORT",
        "127.0.0.2:PORT",
        "0.0.0.0:PORT",
        "",
        None,
    ],
)
def test_browse_refuses_other_hosts(
    browsing: Callable[[str, str | None], tuple[int, bytes]], run_db: Path, host: str | None
) -> None:
    status, body = browsing(f"/{run_db.stem}/turns.json?_shape=array", host)
    assert status == 400
    assert b"client" not in body and b"turn" not in body
