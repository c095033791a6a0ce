"""`personae browse`: the conversation viewer on datasette, read over HTTP and in a real browser.

One database is built by running shipped scenarios on the scripted backend (a negotiation with
private advisors, a judged support line, and a fork of one support call), and one
`personae browse --port 0` server serves it for the whole module. The browser test drives
Debian's chromium through Playwright and saves screenshots under tests/artifacts/.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, cli, db_rows

import personae
from personae.replay import fork_episode

ARTIFACTS = REPO / "tests" / "artifacts"
#: The search the tests make: only the negotiation has a turn 10 (a private advisor's line).
QUERY, QUERY_TURN = "turn 10", 10


@dataclass(frozen=True)
class Run:
    """The module's database and the episodes the tests open."""

    db: Path
    negotiation: str
    call: str  # a support call that was forked
    fork: str
    fork_turn: int
    before: dict[str, bytes]  # the database's files before browsing


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    db = tmp_path_factory.mktemp("viewer") / "run.db"
    personae.run("negotiation_advisors", backend="scripted", episodes=1, db=db)
    personae.run("support_line", backend="scripted", episodes=2, db=db)
    (negotiation,) = [
        r["episode_id"]
        for r in db_rows(db, "SELECT * FROM episodes WHERE scenario = 'negotiation_advisors'")
    ]
    call = db_rows(db, "SELECT episode_id FROM episodes WHERE scenario = 'support_line' LIMIT 1")
    fork = fork_episode(db, call[0]["episode_id"], 3, backend="scripted")
    # everything into the main file, so that no later close of a connection changes its bytes
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return Run(db, negotiation, call[0]["episode_id"], fork.episode_id, 3, _files(db))


@contextlib.contextmanager
def _serving(db: Path) -> Iterator[str]:
    """`personae browse DB --port 0` in a subprocess; yields its address, always stops it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "personae", "browse", str(db), "--port", "0"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = [proc.stderr.readline()]  # the announcement comes first
    drain = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    drain.start()
    try:
        found = re.search(r" on (http://127\.0\.0\.1:\d+)/ ", lines[0])
        assert found, lines
        base = found.group(1)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/versions.json", timeout=5).close()
                break
            except OSError:
                assert proc.poll() is None, "".join(lines)
                assert time.monotonic() < deadline, "".join(lines)
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drain.join(timeout=5)


@pytest.fixture(scope="module")
def site(run: Run) -> Iterator[str]:
    """The served database's address, e.g. http://127.0.0.1:PORT/run."""
    with _serving(run.db) as base:
        yield f"{base}/{run.db.stem}"


def _files(db: Path) -> dict[str, bytes]:
    """The database file and its WAL, as bytes."""
    return {p.name: p.read_bytes() for p in db.parent.glob(f"{db.name}*") if p.is_file()}


def _get(url: str) -> tuple[int, str, str]:
    """(status, final URL, body) of a GET that follows redirects."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.url, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, url, error.read().decode()


def _turns(db: Path, episode: str) -> list[dict[str, Any]]:
    return db_rows(db, "SELECT * FROM turns WHERE episode_id = ? ORDER BY idx", episode)


# -- over HTTP ---------------------------------------------------------------------------------


def test_episode_list_has_condition_status_turns_and_scores(run: Run, site: str) -> None:
    status, _, body = _get(f"{site}/episode_list.json?_shape=array&_size=max")
    assert status == 200
    rows = {r["episode_id"]: r for r in json.loads(body)}
    episodes = db_rows(run.db, "SELECT * FROM episodes")
    assert set(rows) == {e["episode_id"] for e in episodes}
    for e in episodes:
        row = rows[e["episode_id"]]
        assert (row["scenario"], row["status"], row["end_reason"], row["turns"]) == (
            e["scenario"], e["status"], e["end_reason"], e["n_turns"]
        )  # fmt: skip
        scores = db_rows(
            run.db, "SELECT avg(score) AS s FROM judgments WHERE valid AND episode_id = ?",
            e["episode_id"],
        )[0]["s"]  # fmt: skip
        assert row["mean_score"] == (None if scores is None else round(scores, 3))
    assert rows[run.call]["mean_score"] is not None  # the support line is judged
    assert rows[run.fork]["forked_from"] == run.call and rows[run.fork]["fork_turn"] == 3
    # condition fields that differ are columns, named as `export --where` names them
    assert rows[run.call]["helper.persona"] == "helper_sam"
    assert rows[run.negotiation]["helper.persona"] is None
    # numbered as `personae show` numbers them
    assert sorted(r["n"] for r in rows.values()) == list(range(len(episodes)))


def test_episode_page_reads_in_turn_order_with_private_lines_marked(run: Run, site: str) -> None:
    status, _, page = _get(f"{site}/-/episode/{run.negotiation}")
    assert status == 200
    shown = re.findall(r'id="turn-(\d+)" data-idx="\d+" data-agent="([^"]+)"', page)
    turns = _turns(run.db, run.negotiation)
    assert [(int(i), a) for i, a in shown] == [(t["idx"], t["agent"]) for t in turns]
    private = [t for t in turns if t["audience_json"]]
    assert private  # the advisors whisper
    for t in private:
        to = ", ".join(json.loads(t["audience_json"]))
        assert page.count(f"private · to: {to}") >= 1
    assert page.count("private · to:") == len(private)
    assert page.count('<details class="decision">') == len(turns)  # folded, not spilled


def test_verdicts_forks_and_prompts_are_linked(run: Run, site: str) -> None:
    _, _, fork = _get(f"{site}/-/episode/{run.fork}")
    assert f'href="/{run.db.stem}/-/episode/{run.call}#turn-{run.fork_turn}"' in fork
    _, _, parent = _get(f"{site}/-/episode/{run.call}")
    assert f"/-/episode/{run.fork}#turn-{run.fork_turn}" in parent
    verdicts = db_rows(run.db, "SELECT * FROM judgments WHERE episode_id = ?", run.call)
    assert parent.count('<div class="verdict') == len(verdicts) > 0
    call = db_rows(
        run.db, "SELECT * FROM llm_calls WHERE episode_id = ? AND purpose = 'turn' LIMIT 1",
        run.call,
    )[0]  # fmt: skip
    assert f'href="/{run.db.stem}/-/prompt/{call["call_id"]}"' in parent
    status, _, prompt = _get(f"{site}/-/prompt/{call['call_id']}")
    assert status == 200
    assert _unescape(prompt).count(call["prompt"]) == 1


def _unescape(html: str) -> str:
    import html as html_module

    return html_module.unescape(html)


def test_search_finds_the_turn_and_links_to_it(run: Run, site: str) -> None:
    status, _, page = _get(f"{site}/-/search?q={QUERY.replace(' ', '+')}")
    assert status == 200
    assert "1 turn matches" in page
    assert f'href="/{run.db.stem}/-/episode/{run.negotiation}#turn-{QUERY_TURN}"' in page
    # datasette's own table search uses the same index
    _, _, body = _get(f"{site}/turns.json?_search=seller_advisor&_shape=array&_size=max")
    found = json.loads(body)
    assert found and all("seller_advisor" in r["text"] for r in found)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"q": '"unbalanced'}, "0 turns match"),  # quotes are balanced for the user
        ({"q": "AND OR NOT"}, "0 turns match"),  # operators are words unless raw
        ({"q": "turn AND (", "raw": "1"}, "Cannot search for that"),  # FTS5's error, shown
        ({"q": "advis*", "raw": "1"}, "6 turns match"),  # a prefix: the advisors' lines
    ],
)
def test_odd_searches_answer_with_a_page(site: str, query: dict[str, str], expected: str) -> None:
    status, _, page = _get(f"{site}/-/search?{urllib.parse.urlencode(query)}")
    assert status == 200 and expected in page


def test_ids_may_be_abbreviated_and_unknown_ones_are_not_found(run: Run, site: str) -> None:
    status, url, _ = _get(f"{site}/-/episode/{run.negotiation[:6]}")
    assert status == 200 and url.endswith(f"/-/episode/{run.negotiation}")
    assert _get(f"{site}/-/episode/ffffffffffff")[0] == 404
    assert _get(f"{site}/-/prompt/no-such-call")[0] == 404
    assert _get(f"{site.rsplit('/', 1)[0]}/nodb/-/episode/{run.negotiation}")[0] == 404


def test_tables_fold_long_json_and_link_episodes(run: Run, site: str) -> None:
    _, _, episodes = _get(f"{site}/episodes")
    assert '<details class="personae-fold">' in episodes  # personas_json
    _, _, turns = _get(f"{site}/turns?episode_id={run.negotiation}")
    assert f"/-/episode/{run.negotiation}#turn-0" in turns
    assert "private · to: buyer" in turns


# -- in a real browser -------------------------------------------------------------------------


def _missing(what: str) -> None:
    """One line instead of a crash; CI (which installs chromium) must not skip silently."""
    if os.environ.get("CI"):
        pytest.fail(what, pytrace=False)
    pytest.skip(what)


def test_reading_a_run_in_a_real_browser(
    run: Run, site: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        _missing(
            "chromium not found: install it with 'make system-deps' (apt-get install chromium)"
        )
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("playwright not installed: pip install -e '.[dev]'")
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {"episode list": ARTIFACTS / "episode_list.png", "episode": ARTIFACTS / "episode.png"}
    home = site.rsplit("/", 1)[0] + "/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(10_000)
            # from the home page to the list, without knowing a table name
            page.goto(home)
            page.locator(".personae-home a", has_text="Episodes").click()
            expect(page).to_have_url(re.compile(r"/episode_list$"))
            expect(page.locator("table.rows-and-columns tbody tr")).to_have_count(4)
            page.screenshot(path=str(shots["episode list"]), full_page=True)

            # one click on an episode: its turns, in order, with their speakers
            page.locator("a.personae-chat-link", has_text=run.negotiation).first.click()
            expect(page).to_have_url(re.compile(f"/-/episode/{run.negotiation}$"))
            turns = _turns(run.db, run.negotiation)
            shown = page.locator("ol.chat > li.turn")
            expect(shown).to_have_count(len(turns))
            seen = [
                (li.get_attribute("data-agent"), li.locator("p.text").inner_text())
                for li in shown.all()
            ]
            assert seen == [(t["agent"], t["text"]) for t in turns]
            persona = json.loads(
                db_rows(run.db, "SELECT personas_json FROM episodes WHERE episode_id = ?",
                        run.negotiation)[0]["personas_json"]
            )  # fmt: skip
            first = shown.first
            expect(first.locator(".speaker")).to_have_text(persona[turns[0]["agent"]]["name"])
            # private lines say who heard them; the others say nothing
            for li, t in zip(shown.all(), turns, strict=True):
                if t["audience_json"]:
                    to = ", ".join(json.loads(t["audience_json"]))
                    expect(li.locator(".audience")).to_have_text(f"private · to: {to}")
                    expect(li).to_have_class(re.compile(r"\bprivate\b"))
                else:
                    expect(li.locator(".audience")).to_have_count(0)
            # hidden state and decisions are folded until asked for
            decision = first.locator("details.decision pre")
            expect(decision).to_be_hidden()
            first.locator("details.decision summary").click()
            expect(decision).to_be_visible()
            page.screenshot(path=str(shots["episode"]), full_page=True)

            # the prompt behind a turn is one click away
            with_call = next(t for t in turns if t["call_id"])
            page.locator(f"#turn-{with_call['idx']} a.prompt-link").first.click()
            prompt = db_rows(
                run.db, "SELECT prompt FROM llm_calls WHERE call_id = ?", with_call["call_id"]
            )[0]["prompt"]  # fmt: skip
            assert page.locator("pre.rendered-prompt").inner_text() == prompt.strip("\n")
            page.go_back()

            # search from the page's own box; the hit lands on its turn
            page.locator(".personae-nav input[name=q]").fill(QUERY)
            page.locator(".personae-nav input[name=q]").press("Enter")
            expect(page.locator(".search-count")).to_contain_text("1 turn matches")
            page.locator("a.hit-link").first.click()
            expect(page).to_have_url(re.compile(f"/-/episode/{run.negotiation}#turn-{QUERY_TURN}$"))
            target = page.locator("li.turn:target")
            expect(target).to_have_attribute("data-idx", str(QUERY_TURN))
            expect(target).to_be_in_viewport()
            expect(target.locator("p.text")).to_contain_text(QUERY)

            # a fork links to its parent at the turn it left, and back
            page.goto(f"{site}/-/episode/{run.fork}")
            expect(page.locator("#turn-2 .verdicts .verdict")).to_contain_text("empathy_rater")
            page.locator("li.fork-mark.forked-here a").click()
            expect(page).to_have_url(re.compile(f"/-/episode/{run.call}#turn-{run.fork_turn}$"))
            expect(page.locator("li.fork-mark.fork-leaves a")).to_have_text(f"Fork {run.fork}")
        finally:
            browser.close()
    with capsys.disabled():
        print("".join(f"\nscreenshot of the {name}: {path}" for name, path in shots.items()))
    assert all(path.stat().st_size > 10_000 for path in shots.values())


# -- the database, old databases, room ---------------------------------------------------------


def test_browsing_left_the_run_database_unchanged(run: Run, site: str) -> None:
    _get(f"{site}/-/search?q=turn")
    assert _files(run.db) == run.before
    tables = db_rows(
        run.db, "SELECT name FROM sqlite_master WHERE name LIKE '%fts%' OR name = 'episode_list'"
    )
    assert tables == []


def test_a_schema_1_database_reads_as_a_chat(tmp_path: Path) -> None:
    from personae.export import browse_copy
    from personae.export._viewer._chat import chat_page

    old = tmp_path / "old.db"
    shutil.copy(REPO / "tests" / "data" / "v1_conversation.db", old)
    before = old.read_bytes()
    (tmp_path / "snap").mkdir()
    copy = browse_copy(old, tmp_path / "snap")
    assert old.read_bytes() == before
    conn = sqlite3.connect(copy)
    conn.row_factory = sqlite3.Row
    try:
        rows = lambda sql, *a: [dict(r) for r in conn.execute(sql, a)]  # noqa: E731
        (episode,) = rows("SELECT * FROM episodes WHERE parent_episode_id IS NOT NULL")
        eid = episode["episode_id"]
        page = chat_page(
            copy.stem, episode,
            rows("SELECT * FROM turns WHERE episode_id = ? ORDER BY idx", eid),
            rows("SELECT * FROM judgments WHERE episode_id = ?", eid),
            rows("SELECT * FROM llm_calls WHERE episode_id = ?", eid),
            rows("SELECT * FROM episodes WHERE parent_episode_id = ?", eid),
        )  # fmt: skip
        listed = rows("SELECT * FROM episode_list")
    finally:
        conn.close()
    assert [t["kind"] for t in page["turns"]] == ["line"] * len(page["turns"]) != []
    assert page["turns"][0]["marks"] == [] and page["turns"][3]["marks"][0]["kind"] == "forked-here"
    assert len(listed) == 3 and {r["verdicts"] for r in listed} == {0}


def test_too_little_room_for_the_snapshot_is_one_line(
    run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from personae.export import _browse

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(_browse.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    code, out, err = cli(["browse", str(run.db), "--port", "0"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "not enough free space for a snapshot" in lines[0], err
    assert "TMPDIR" in lines[0]
