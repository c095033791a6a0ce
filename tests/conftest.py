"""Shared fixtures for the personae unit tests (scripted backend only; no model)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from personae.agents import Client, ClientProfile, Counselor, CounselorPersona

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
PERSONAS = SCENARIOS / "personas"
CBT_COUNSELOR = PERSONAS / "counselors" / "cbt.yaml"
GRIEF_CLIENT = PERSONAS / "clients" / "margaret_grief.yaml"
N_CLIENTS = len(list((PERSONAS / "clients").glob("*.yaml")))


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def base_scenario(**overrides: Any) -> dict[str, Any]:
    """A small valid dyadic scenario (scripted backend) using the shipped persona files."""
    data: dict[str, Any] = {
        "name": "unit",
        "graph": {"kind": "dyadic", "opener": "counselor", "max_turns": 6},
        "backend": "scripted",
        "seed": 3,
        "agents": {
            "counselor": {"role": "counselor", "persona": str(CBT_COUNSELOR)},
            "client": {"role": "client", "persona": str(GRIEF_CLIENT)},
        },
    }
    data.update(overrides)
    return data


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    """Write a scenario (a mapping, dumped as YAML, or raw text) into tmp_path; return its path."""
    counter = iter(range(1000))

    def write(
        data: dict[str, Any] | str | None = None, name: str | None = None, **overrides: Any
    ) -> Path:
        path = tmp_path / (name or f"scenario{next(counter)}.yaml")
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            content = base_scenario(**overrides) if data is None else data
            path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def counselor_persona() -> CounselorPersona:
    return CounselorPersona.model_validate(read_yaml(CBT_COUNSELOR))


@pytest.fixture
def client_profile() -> ClientProfile:
    return ClientProfile.model_validate(read_yaml(GRIEF_CLIENT))


@pytest.fixture
def make_pair(
    counselor_persona: CounselorPersona, client_profile: ClientProfile
) -> Callable[..., tuple[Counselor, Client]]:
    """Build a (counselor, client) pair in one render mode, optionally with a client style."""

    def make(render_mode: str = "transcript", style: str | None = None) -> tuple[Counselor, Client]:
        profile = client_profile
        if style is not None:
            profile = client_profile.model_copy(update={"style": style})
        return (
            Counselor("counselor", counselor_persona, render_mode=render_mode),  # type: ignore[arg-type]
            Client("client", profile, render_mode=render_mode),  # type: ignore[arg-type]
        )

    return make


def db_rows(path: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of a query against a database file, as dicts."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the command line in this process (as the console script does): (exit code,
    stdout, stderr)."""
    from personae.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else int(code)), captured.out, captured.err


def log_problems(db: Path, *, all_complete: bool = False) -> list[str]:
    """What is wrong with a turn log: damage, or an episode whose turns are not 0..n_turns-1
    with one call for each but the scripted opening (only `complete` episodes are checked, or,
    with `all_complete`, every episode must be complete)."""
    conn = sqlite3.connect(db)
    try:
        problems = []
        if (check := conn.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
            problems.append(f"integrity_check: {check}")
        for episode_id, status, n_turns in conn.execute(
            "SELECT episode_id, status, n_turns FROM episodes"
        ).fetchall():
            if status != "complete":
                if all_complete:
                    problems.append(f"{episode_id}: {status}")
                continue
            idx = [
                r[0]
                for r in conn.execute(
                    "SELECT idx FROM turns WHERE episode_id = ? ORDER BY idx", (episode_id,)
                )
            ]
            calls = conn.execute(
                "SELECT count(*) FROM llm_calls WHERE episode_id = ?", (episode_id,)
            ).fetchone()[0]
            if idx != list(range(n_turns or 0)) or calls != len(idx) - 1:
                problems.append(f"{episode_id}: complete with turns {idx}, {calls} calls")
        return problems
    finally:
        conn.close()


def tree_snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under `folder` (Python's bytecode caches aside)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
        if "__pycache__" not in p.parts
    }


def file_snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None
