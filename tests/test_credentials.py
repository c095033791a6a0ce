"""Credentials go only to endpoints the user vouched for on the command line: a scenario file or
a database (someone else's, perhaps) naming an `openai:` URL never gets `$OPENAI_API_KEY`,
unless the user passes `--trust-backend` or gives the backend again with `--backend`."""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from conftest import base_scenario, db_rows
from typer.testing import CliRunner

from personae.cli import app

KEY = "sk-test-secret-0123456789"


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers every completion and records the headers."""

    seen: ClassVar[list[str | None]] = []

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        self._json({"data": [{"id": "tiny"}]})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        type(self).seen.append(self.headers.get("Authorization"))
        text = "Fine, thanks."
        schema = body.get("response_format", {}).get("json_schema", {}).get("schema", {})
        if enum := schema.get("properties", {}).get("choice", {}).get("enum"):
            text = json.dumps({"choice": enum[0]})  # honours the openai dialect's choices
        choice = {"text": text, "message": {"content": text}, "finish_reason": "stop"}
        self._json({"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"openai:http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _run(*argv: str) -> Any:
    result = CliRunner().invoke(app, list(argv))
    assert result.exit_code == 0, result.output
    return result


def _scenario(tmp_path: Path, spec: str) -> Path:
    data = base_scenario(backend=spec)
    data["graph"]["max_turns"] = 3
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_an_endpoint_named_by_a_scenario_file_gets_no_key(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    db = tmp_path / "run.db"
    result = _run("run", str(_scenario(tmp_path, server)), "--db", str(db), "-q")
    assert _Recorder.seen and all(h is None for h in _Recorder.seen)
    assert "$OPENAI_API_KEY is not sent to" in result.stderr  # it says which endpoint
    assert server.removeprefix("openai:") in result.stderr
    assert KEY not in json.dumps(db_rows(db, "SELECT * FROM runs"))


def test_trust_backend_or_the_backend_given_again_sends_the_key(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    scenario = str(_scenario(tmp_path, server))
    result = _run("run", scenario, "--db", str(tmp_path / "a.db"), "-q", "--trust-backend")
    assert _Recorder.seen and set(_Recorder.seen) == {f"Bearer {KEY}"}
    assert f"$OPENAI_API_KEY is sent to {server}" in result.stderr  # it says where keys go
    _Recorder.seen = []
    _run("run", scenario, "--db", str(tmp_path / "b.db"), "-q", "--backend", server)
    assert _Recorder.seen and set(_Recorder.seen) == {f"Bearer {KEY}"}


def test_a_database_resumed_or_forked_does_not_send_the_key_to_its_stored_endpoint(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    db = tmp_path / "shared.db"
    _run("run", str(_scenario(tmp_path, server)), "--db", str(db), "-q")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the user who received the database has a key
    _Recorder.seen = []
    with sqlite3.connect(db) as conn:  # make the resume do some work
        conn.execute("UPDATE episodes SET status = 'failed'")
    _run("run", "--resume", str(db), "-q")
    _run("replay", str(db), "0", "--fork-at", "1")
    assert _Recorder.seen and all(h is None for h in _Recorder.seen)
    _Recorder.seen = []
    _run("replay", str(db), "0", "--fork-at", "2", "--trust-backend")
    assert _Recorder.seen and set(_Recorder.seen) == {f"Bearer {KEY}"}
