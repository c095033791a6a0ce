"""B4 browse: what `personae browse` costs before its first page, and how fast its pages answer.

Browsing never writes to the run database: it copies it (SQLite's online backup) and adds the
search index and the episode list to the copy. Side by side in one run: the copy, the viewer's
preparation of it (schema check, FTS5 index on `turns.text`, episode-list table), and the
alternative that copies nothing — a contentless FTS5 index built into a separate database from
the original opened read-only (the index datasette's own table search could not use, and no
place for the episode list). Then the pages, served in-process by datasette with the viewer's
metadata and plugin: the episode list, one episode's chat, a search, datasette's table search.

    .venv/bin/python benchmarks/b4_browse.py [--episodes 2000] [--scale 1]

`--scale K` copies every episode K-1 more times (new ids, same rows) to reach sizes a scripted
run would take minutes to write.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import report, write_scenario

import personae
from personae.export import browse_copy
from personae.export._browse import _browse_plugin, _metadata_path
from personae.export._viewer import STATIC, STATIC_MOUNT, TEMPLATES
from personae.store._schema import readonly_uri


def _scale(db: Path, k: int) -> None:
    """Copy each episode k-1 times under new ids (turns, calls and episodes alike)."""
    if k <= 1:
        return
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER IF EXISTS turns_append_only")
    cols = {
        t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")]
        for t in ("episodes", "turns", "llm_calls")
    }

    def copy(table: str, renamed: dict[str, str], skip: tuple[str, ...] = ()) -> None:
        keep = [c for c in cols[table] if c not in skip]
        picked = ", ".join(renamed.get(c, c) for c in keep)
        conn.execute(
            f"INSERT INTO {table} ({', '.join(keep)}) SELECT {picked} FROM {table}, n "
            f"WHERE {table}.episode_id NOT LIKE '%~%'"
        )

    conn.execute(
        f"CREATE TEMP TABLE n AS WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k+1 "
        f"FROM r WHERE k < {k - 1}) SELECT k FROM r"
    )
    copy("episodes", {"episode_id": "episode_id || '~' || k", "idx": "idx + k * 1000000"})
    copy(
        "turns",
        {"episode_id": "episode_id || '~' || k", "call_id": "call_id || '~' || k"},
        skip=("id",),
    )
    copy("llm_calls", {"call_id": "call_id || '~' || k", "episode_id": "episode_id || '~' || k"})
    conn.commit()
    conn.execute("VACUUM")
    conn.close()


def _separate_index(db: Path, folder: Path) -> float:
    start = time.perf_counter()
    conn = sqlite3.connect(":memory:")
    conn.execute("ATTACH ? AS run", (readonly_uri(db),))
    conn.execute("ATTACH ? AS idx", (str(folder / "fts.db"),))
    conn.execute(
        "CREATE VIRTUAL TABLE idx.turns_fts USING fts5(text, content='', tokenize='porter')"
    )
    conn.execute("INSERT INTO idx.turns_fts (rowid, text) SELECT id, text FROM run.turns")
    conn.commit()
    conn.close()
    return time.perf_counter() - start


async def _pages(copy: Path, episode: str) -> dict[str, float]:
    from datasette.app import Datasette

    name = copy.stem
    paths = {
        "episode list": f"/{name}/episode_list",
        "episode list, one facet value": f"/{name}/episode_list?status=complete",
        "one episode": f"/{name}/-/episode/{episode}",
        "search, every turn matches (viewer)": f"/{name}/-/search?q=turn",
        "search, every turn matches (datasette table)": f"/{name}/turns?_search=turn",
    }
    ds = Datasette(
        [str(copy)],
        metadata=json.loads(_metadata_path(copy).read_text()),
        template_dir=str(TEMPLATES),
        static_mounts=[(STATIC_MOUNT, str(STATIC))],
    )
    await ds.invoke_startup()
    times: dict[str, float] = {}
    for label, path in paths.items():
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            response = await ds.client.get(path)
            runs.append(time.perf_counter() - start)
            assert response.status_code == 200, (path, response.status_code)
        times[label] = statistics.median(runs[1:])  # the first pays for warming caches
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scenario = write_scenario(folder, repeats=args.episodes, max_turns=12, backend="scripted")
        db = folder / "run.db"
        personae.run(scenario, db=db)
        _scale(db, args.scale)
        conn = sqlite3.connect(db)
        n_episodes, n_turns = conn.execute(
            "SELECT (SELECT count(*) FROM episodes), (SELECT count(*) FROM turns)"
        ).fetchone()
        episode = conn.execute("SELECT episode_id FROM episodes LIMIT 1").fetchone()[0]
        conn.close()
        size = db.stat().st_size / 2**20
        (folder / "snap").mkdir()
        start = time.perf_counter()
        copy = browse_copy(db, folder / "snap")
        total = time.perf_counter() - start
        # the copy alone, again, to split the total
        start = time.perf_counter()
        src, dst = sqlite3.connect(readonly_uri(db), uri=True), sqlite3.connect(folder / "b.db")
        src.backup(dst)
        src.close()
        dst.close()
        backup = time.perf_counter() - start
        separate = _separate_index(db, folder)
        with _browse_plugin(frozenset({copy.stem})):
            pages = asyncio.run(_pages(copy, episode))
    rows: list[dict[str, Any]] = [
        {"step": "snapshot + prepare (what browse does)", "seconds": total},
        {"step": "  of which the copy (online backup)", "seconds": backup},
        {"step": "  of which schema, FTS index, episode list", "seconds": total - backup},
        {"step": "alternative: FTS index in a separate file, no copy", "seconds": separate},
        *({"step": f"page: {label}", "seconds": t} for label, t in pages.items()),
    ]
    report(
        "b4_browse",
        f"B4 browse ({n_episodes:,} episodes, {n_turns:,} turns, {size:,.0f} MiB database)",
        ["step", "seconds"],
        rows,
        {
            "copy MiB/s": size / backup,
            "episodes": n_episodes,
            "turns": n_turns,
            "database MiB": size,
        },
    )


if __name__ == "__main__":
    main()
