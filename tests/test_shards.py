"""Shards of a plan (`personae run --shard K/N`) and `personae merge`: the shards partition the
plan, two shards merged hold exactly a single run's episodes and turns, merging again changes
nothing, conflicts are reported, and bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REPO,
    SCENARIOS,
    base_scenario,
    cli,
    db_rows,
    file_snapshot,
    log_problems,
    tree_snapshot,
)

import personae
from personae.backends import ScriptedBackend
from personae.errors import UserError
from personae.runner import Shard, shard_number
from personae.scenario import EpisodePlan, load_scenario, plan_episodes
from personae.store import merge_databases

STYLES = ["plain", "upset", "verbose", "reserved", "tangent", "pleasing"]

#: What an episode is, apart from when it ran and in which run.
EPISODE = "episode_id, idx, scenario, condition_json, personas_json, seed, status, end_reason, "
EPISODE += "error, n_turns, stage, outcome_json, parent_episode_id, fork_turn"
TURN = (
    "episode_id, idx, agent, role, kind, text, audience_json, hidden_json, decision_json, call_id"
)
CALL = "call_id, episode_id, turn_idx, agent, purpose, prompt, params_json, seed, output"


@pytest.fixture
def scenario(write_scenario: Callable[..., Path]) -> Path:
    """12 four-turn episodes on the scripted backend."""
    return write_scenario(
        repeats=2,
        graph={"kind": "dyadic", "opener": "counselor", "max_turns": 4},
        grid={"client.style": STYLES},
    )


def rows(db: Path, columns: str, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return sorted(conn.execute(f"SELECT {columns} FROM {table}").fetchall(), key=repr)
    finally:
        conn.close()


def content(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Episodes, turns and calls of a database, up to row ids, run ids and timestamps."""
    return {
        "episodes": rows(db, EPISODE, "episodes"),
        "turns": rows(db, TURN, "turns"),
        "calls": rows(db, CALL, "llm_calls"),
    }


def every_row(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, row ids and timestamps included."""
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: conn.execute(f"SELECT * FROM [{t}] ORDER BY 1").fetchall() for t in tables}
    finally:
        conn.close()


def run_shards(scenario: Path, folder: Path, count: int) -> list[Path]:
    paths = []
    for index in range(1, count + 1):
        path = folder / f"shard-{index}.db"
        result = personae.run(scenario, db=path, shard=f"{index}/{count}")
        assert result.failed == 0
        paths.append(path)
    return paths


# -- the split ---------------------------------------------------------------------------------


def test_shards_of_n_partition_the_plan_for_n_1_to_4() -> None:
    plan = plan_episodes(load_scenario(SCENARIOS / "counseling_cbt.yaml"))
    ids = [p.episode_id for p in plan]
    for count in range(1, 5):
        shards = [Shard(k, count).select(plan) for k in range(1, count + 1)]
        picked = [p.episode_id for shard in shards for p in shard]
        assert sorted(picked) == sorted(ids), count  # every episode, exactly once
        for shard in shards:
            assert shard, f"an empty shard of {count}"
            order = [ids.index(p.episode_id) for p in shard]
            assert order == sorted(order)  # plan order kept
        # membership depends on the id alone: the same in any process, for any plan it is in
        assert all(shard_number(p.episode_id, count) == k + 1 for k, s in enumerate(shards)
                   for p in s)  # fmt: skip


def test_a_shard_never_splits_a_study_in_stages() -> None:
    plans = [EpisodePlan(i, 0, f"e{i}", {}, {}, stage=i % 2) for i in range(4)]
    with pytest.raises(UserError, match="in stages"):
        Shard(1, 2).select(plans)
    assert len(Shard(1, 1).select(plans)) == 4


# -- shard runs and merging --------------------------------------------------------------------


def test_two_shards_merged_equal_a_single_run(scenario: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole.db"
    personae.run(scenario, db=whole)
    one, two = run_shards(scenario, tmp_path, 2)
    sizes = [len(db_rows(p, "SELECT 1 FROM episodes")) for p in (one, two)]
    assert sum(sizes) == 12 and 0 not in sizes
    assert {r["shard"] for r in db_rows(one, "SELECT shard FROM runs")} == {"1/2"}

    out = tmp_path / "merged.db"
    report = merge_databases(out, [one, two])
    assert [s.added for s in report.shards] == sizes and not report.conflicts
    assert (report.episodes, report.complete, report.turns) == (12, 12, 48)
    assert report.integrity == "ok" and log_problems(out, all_complete=True) == []
    assert content(out) == content(whole)

    # in the other order, the same episodes and turns; and the merged database resumes as the
    # whole plan, with nothing left to run
    again = tmp_path / "reversed.db"
    merge_databases(again, [two, one])
    assert content(again) == content(whole)
    resumed = personae.run(resume=out)
    assert (resumed.episodes, resumed.skipped) == (0, 12)


def test_rerunning_a_merge_is_a_no_op(scenario: Path, tmp_path: Path, capsys: Any) -> None:
    shards = run_shards(scenario, tmp_path, 3)
    out = tmp_path / "merged.db"
    code, stdout, _ = cli(["merge", str(out), *map(str, shards)], capsys)
    assert code == 0 and "12 episodes (12 complete), 48 turns; integrity_check ok" in stdout
    before = every_row(out)
    code, stdout, _ = cli(["merge", str(out), *map(str, shards)], capsys)
    assert code == 0
    assert "0 episodes added (0 turns)" in stdout and "0 conflicts" in stdout
    assert every_row(out) == before  # not one row added, changed or renumbered


def test_a_shard_database_resumes_as_its_shard(scenario: Path, tmp_path: Path) -> None:
    db = tmp_path / "shard-2.db"
    first = personae.run(scenario, db=db, shard="2/3")
    again = personae.run(resume=db)  # no --shard: the database says which one it is
    assert (again.episodes, again.skipped) == (0, first.episodes)
    assert len(db_rows(db, "SELECT 1 FROM episodes")) == first.episodes


def test_an_unfinished_episode_is_replaced_by_a_complete_one(
    scenario: Path, tmp_path: Path
) -> None:
    broken, fixed = tmp_path / "broken.db", tmp_path / "fixed.db"
    personae.run(scenario, db=broken, shard="1/2", backend=ScriptedBackend(fail_rate=1.0))
    personae.run(scenario, db=fixed, shard="1/2")
    out = tmp_path / "merged.db"
    merge_databases(out, [broken])
    assert {r["status"] for r in db_rows(out, "SELECT status FROM episodes")} == {"failed"}
    report = merge_databases(out, [fixed])
    assert report.shards[0].replaced == report.episodes == report.complete > 0
    assert content(out)["turns"] == content(fixed)["turns"]
    assert log_problems(out, all_complete=True) == []


def test_a_conflict_is_reported_and_the_first_version_kept(
    scenario: Path, tmp_path: Path, capsys: Any
) -> None:
    one = tmp_path / "one.db"
    other = tmp_path / "other.db"
    personae.run(scenario, db=one, shard="1/2")
    # the same episodes, complete, with other replies (as another model run would give)
    personae.run(scenario, db=other, backend=ScriptedBackend(replies=["Something else."]))
    out = tmp_path / "merged.db"
    merge_databases(out, [one])
    kept = content(out)["turns"]
    code, stdout, stderr = cli(["merge", str(out), str(other)], capsys)
    assert code == 1
    clashes = [line for line in stderr.splitlines() if line.startswith("conflict: episode ")]
    assert len(clashes) == len(db_rows(one, "SELECT 1 FROM episodes"))
    assert "with different turns (first at turn 1)" in clashes[0]  # turn 0 is the fixed opening
    assert f"{len(clashes)} conflicts" in stdout
    merged = content(out)
    assert [t for t in merged["turns"] if t[0] in {c.split()[2] for c in clashes}] == kept
    assert len(merged["episodes"]) == 12  # the other shard's remaining episodes were added


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ("3/2", "--shard 3/2: shard 3 is outside 1..2"),
        ("0/4", "use --array=1-N"),
        ("1/0", "N must be at least 1"),
        ("two/4", "expected K/N"),
        ("/4", "expected K/N"),
        ("$SLURM_ARRAY_TASK_ID/", "expected K/N"),
    ],
)
def test_a_bad_shard_is_one_line_and_writes_nothing(
    scenario: Path, tmp_path: Path, capsys: Any, shard: str, message: str
) -> None:
    before = tree_snapshot(tmp_path)
    db = tmp_path / "out" / "run.db"
    code, _, stderr = cli(["run", str(scenario), "--db", str(db), "--shard", shard, "-q"], capsys)
    assert code == 2
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert tree_snapshot(tmp_path) == before


def files(folder: Path) -> dict[str, bytes | None]:
    """The folder's files, less the -wal and -shm files SQLite makes for any reader of a
    database in WAL mode."""
    return {k: v for k, v in tree_snapshot(folder).items() if not k.endswith(("-wal", "-shm"))}


def _schema_version_1(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    conn = sqlite3.connect(dst)
    with conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    return dst


def test_bad_merges_are_one_line_and_write_nothing(
    scenario: Path, tmp_path: Path, write_scenario: Callable[..., Path], capsys: Any
) -> None:
    one, two = run_shards(scenario, tmp_path, 2)
    other_name = tmp_path / "other-name.db"
    personae.run(write_scenario(base_scenario(name="other")), db=other_name)
    other_seed = tmp_path / "other-seed.db"
    personae.run(scenario, db=other_seed, seed=99)
    old = _schema_version_1(one, tmp_path / "old.db")
    text = tmp_path / "notes.db"
    text.write_text("not a database")
    out = tmp_path / "merged.db"
    cases = [
        ([one, other_name], "another scenario than", "'unit' vs 'other'"),
        ([one, other_seed], "another scenario than", "another 'seed'"),
        ([old, two], "schema version 1, not 2", "personae run --resume"),
        ([one, tmp_path / "missing.db"], "database file not found", ""),
        ([one, text], "not a personae run database", ""),
        ([one, out], "the output database is also an input", ""),
    ]
    for inputs, message, fix in cases:
        before = files(tmp_path)
        code, stdout, stderr = cli(["merge", str(out), *map(str, inputs)], capsys)
        assert code == 2, (inputs, stdout, stderr)
        assert stderr.count("\n") == 1 and message in stderr and fix in stderr, stderr
        assert files(tmp_path) == before and not out.exists()
    # into an existing database of another scenario: refused, the file unchanged
    merge_databases(out, [other_name])
    before_bytes = file_snapshot(out)
    code, _, stderr = cli(["merge", str(out), str(one)], capsys)
    assert code == 2 and "another scenario than" in stderr
    assert file_snapshot(out) == before_bytes


# -- the README's SLURM example ----------------------------------------------------------------


def test_the_readme_slurm_array_example_runs_and_merges(tmp_path: Path, capsys: Any) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    script = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "#SBATCH" in b)
    merge = re.search(r"--wrap '(personae merge [^']+)'", readme)
    assert "--array=1-" in script and merge is not None
    script = script.replace("openai:http://gpu-node:8000/v1", "scripted")
    # `personae` is this checkout; two array tasks (at once) instead of eight
    shim = f'personae() {{ "{sys.executable}" -m personae "$@"; }}\n'
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLURM_ARRAY_TASK_COUNT": "2"}
    tasks = [
        subprocess.Popen(
            ["bash", "-c", shim + script],
            cwd=tmp_path,
            text=True,
            stderr=subprocess.PIPE,
            env={**env, "SLURM_ARRAY_TASK_ID": task},
        )
        for task in ("1", "2")
    ]
    for task in tasks:
        assert task.wait(timeout=120) == 0, task.stderr.read() if task.stderr else ""
    # the merge line as the shell expands it, run in this process
    words = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {merge[1]}"], cwd=tmp_path, text=True,
        capture_output=True, check=True,
    ).stdout.split()  # fmt: skip
    code, stdout, _ = cli([words[1], *(str(tmp_path / w) for w in words[2:])], capsys)
    planned = len(plan_episodes(load_scenario(SCENARIOS / "counseling_cbt.yaml")))
    assert code == 0 and f"{planned} episodes ({planned} complete)" in stdout
    assert log_problems(tmp_path / "logs" / "cbt.db", all_complete=True) == []


# -- many inference servers --------------------------------------------------------------------


def test_an_episode_goes_to_the_same_server_from_any_shard_process() -> None:
    urls = ",".join(f"http://host{i}:8000/v1" for i in range(3))
    ids = [p.episode_id for p in plan_episodes(load_scenario(SCENARIOS / "counseling_cbt.yaml"))]
    code = (
        "import json, sys; from personae.backends import create_backend\n"
        f"b = create_backend('openai:{urls}?model=m')\n"
        "ids = json.load(sys.stdin)\n"
        "print(json.dumps([b.endpoint_for({'episode_id': i}) for i in ids]))"
    )
    routes = []
    for hash_seed in ("1", "2"):  # another process, another str hash: the same routes
        done = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps(ids), capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": hash_seed}, check=True,
        )  # fmt: skip
        routes.append(json.loads(done.stdout))
    assert routes[0] == routes[1]
    route = dict(zip(ids, routes[0], strict=True))
    for k in (1, 2):  # each shard of two uses all three servers
        assert {route[i] for i in ids if shard_number(i, 2) == k} == set(urls.split(","))


# -- bad executor options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--executor", "ray", "--shard", "1/2"], "--shard and --executor ray do not go together"),
        (["--workers", "2"], "--workers: an option of the ray executor — add --executor ray"),
        (["--address", "auto"], "--address: an option of the ray executor"),
        (["--executor", "dask"], "--executor: unknown executor 'dask' — use local or ray"),
    ],
)
def test_bad_executor_options_are_one_line_and_write_nothing(
    scenario: Path, tmp_path: Path, capsys: Any, options: list[str], message: str
) -> None:
    before = tree_snapshot(tmp_path)
    argv = ["run", str(scenario), "--db", str(tmp_path / "run.db"), "-q", *options]
    code, _, stderr = cli(argv, capsys)
    assert code == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    assert tree_snapshot(tmp_path) == before


def test_the_ray_executor_without_ray_says_how_to_install_it(
    scenario: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    before = tree_snapshot(tmp_path)
    argv = ["run", str(scenario), "--db", str(tmp_path / "run.db"), "-q", "--executor", "ray"]
    code, _, stderr = cli(argv, capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert "needs Ray, which is not installed" in stderr and "pip install 'personae[ray]'" in stderr
    assert tree_snapshot(tmp_path) == before
