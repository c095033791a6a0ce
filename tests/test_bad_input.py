"""The bad-input corpus: every input a user can get wrong is one line on stderr, exit 2.

Each case runs a command through the CLI entry point (`personae.cli.main`) in a fresh folder
(also the working directory, so a default `logs/` would show) and checks what a user sees:
exit code 2, exactly one stderr line starting with `error: ` that names the problem, no
traceback anywhere, and no file created or changed (no database, no export, no folder).
"""

from __future__ import annotations

import codecs
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CBT_COUNSELOR, GRIEF_CLIENT, base_scenario, tree_snapshot

import personae
from personae.cli import main
from personae.experiments import run_teaching

REPO = Path(__file__).resolve().parents[1]
BIG = str(2**63)
BOMB = "".join(
    f"  {name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)
GRIEF_TEXT = GRIEF_CLIENT.read_text(encoding="utf-8")
TEACHING: dict[str, Any] = {
    "kind": "teaching",
    "name": "bad_teaching",
    "backend": "simulated",
    "seeds": [0],
    "data": {"items": 4, "observe": 0},
    "budgets": [0.0, 1.0],
    "functions": ["random"],
    "student": {"demos": 0},
    "teacher": {"explanation_demos": 0, "mental_model_demos": 0, "explain_toward": "gold"},
    "bootstrap": {"resamples": 200},
}


# -- databases made once ------------------------------------------------------------------------


def _settle(db: Path) -> Path:
    """Leave `db` in rollback-journal mode so that readers create no -wal/-shm beside it."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    return db


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("made")
    run_db = folder / "run.db"
    personae.run("counseling_cbt", backend="scripted", episodes=2, db=run_db)
    teaching = folder / "teaching.yaml"
    teaching.write_text(yaml.safe_dump(TEACHING), encoding="utf-8")
    teaching_db = folder / "teaching.db"
    run_teaching(teaching, db=teaching_db)
    return {"run": _settle(run_db), "teaching": _settle(teaching_db)}


@dataclass
class Env:
    """A case's folder and the inputs it can write there."""

    tmp: Path
    made: dict[str, Path]

    @property
    def out_db(self) -> Path:
        return self.tmp / "out.db"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def scenario(self, data: dict[str, Any] | str | bytes | None = None, **overrides: Any) -> str:
        content = data if data is not None else base_scenario(**overrides)
        if isinstance(content, dict):
            content = yaml.safe_dump(content, sort_keys=False)
        return str(self.file("scenario.yaml", content))

    def graph(self, **graph: Any) -> str:
        data = base_scenario()
        data["graph"].update(graph)
        return self.scenario(data)

    def agents(self, counselor: Any = None, client: Any = None, **more: Any) -> str:
        agents = {
            "counselor": counselor or {"role": "counselor", "persona": str(CBT_COUNSELOR)},
            "client": client or {"role": "client", "persona": str(GRIEF_CLIENT)},
            **more,
        }
        return self.scenario(base_scenario(agents=agents))

    def client_persona(self, content: str | bytes) -> str:
        persona = self.file("personas/client.yaml", content)
        return self.agents(client={"role": "client", "persona": str(persona)})

    def teaching(self, raw: dict[str, Any] | str | bytes | None = None, **update: Any) -> str:
        content = raw if raw is not None else {**TEACHING, **update}
        if isinstance(content, dict):
            content = yaml.safe_dump(content, sort_keys=False)
        return str(self.file("teaching.yaml", content))

    def copy(self, key: str, name: str | None = None) -> Path:
        return Path(shutil.copy(self.made[key], self.tmp / (name or f"{key}.db")))

    def sqlite(self, name: str, *sql: str) -> Path:
        path = self.tmp / name
        conn = sqlite3.connect(path)
        for statement in sql:
            conn.execute(statement)
        conn.commit()
        conn.close()
        return path

    def personae_db(self, name: str, *sql: str) -> Path:
        """A copy of the run database with `sql` applied (journal mode kept)."""
        path = self.copy("run", name)
        conn = sqlite3.connect(path)
        for statement in sql:
            conn.execute(statement)
        conn.commit()
        conn.close()
        return path


Build = Callable[[Env], list[str]]


def run(scenario: Callable[[Env], str], *extra: str) -> Build:
    """`personae run SCENARIO --db OUT` (OUT must not appear)."""
    return lambda e: ["run", scenario(e), "--db", str(e.out_db), *extra]


def run_cbt(*extra: str) -> Build:
    """`personae run counseling_cbt --backend scripted --db OUT` plus `extra`."""

    def build(e: Env) -> list[str]:
        options = list(extra)
        if "--backend" not in options:
            options = ["--backend", "scripted", *options]
        return ["run", "counseling_cbt", "--db", str(e.out_db), "-q", *options]

    return build


def teach(scenario: Callable[[Env], str], *extra: str) -> Build:
    return lambda e: ["experiment", "teaching", scenario(e), "--db", str(e.out_db), "-q", *extra]


def export(*extra: str, db: Callable[[Env], Path] = lambda e: e.copy("run")) -> Build:
    return lambda e: ["export", str(db(e)), *(a.replace("{tmp}", str(e.tmp)) for a in extra)]


def case(build: Build, expected: str, id: str, *marks: pytest.MarkDecorator) -> Any:
    return pytest.param(build, expected, id=id, marks=marks)


SCENARIO_FILES = [
    case(run(lambda e: str(e.tmp / "absent.yaml")), "not found", "scenario missing"),
    case(run(lambda e: str(e.tmp)), "not a file", "scenario is a directory"),
    case(run(lambda e: e.scenario("name: x\ngraph:\n\tkind: dyadic\n")), "YAML", "tab indent"),
    case(run(lambda e: e.scenario("name: [x\n")), "malformed YAML", "unclosed flow list"),
    case(run(lambda e: e.scenario("- a\n- list\n")), "mapping", "top level is a list"),
    case(run(lambda e: e.scenario("")), "mapping", "empty file"),
    case(run(lambda e: e.scenario("name: a\nname: b\n")), "duplicate key 'name'", "dup key"),
    case(
        run(
            lambda e: e.scenario(
                yaml.safe_dump(base_scenario(), sort_keys=False).replace(
                    "  client:\n", "  counselor:\n    role: client\n  client:\n", 1
                )
            )
        ),
        "duplicate key 'counselor'",
        "duplicate agent",
    ),
    case(
        run(lambda e: e.scenario(f"name: x\nbackend: scripted\nbackend_options:\n{BOMB}")),
        "alias",
        "alias bomb in backend_options",
    ),
    case(run(lambda e: e.scenario("name: x\nseed: &s [*s]\n")), "recursive", "recursive alias"),
    case(
        run(lambda e: e.scenario("name: x\ndescription: " + "[" * 200 + "]" * 200 + "\n")),
        "nested",
        "deep nesting",
    ),
    case(
        run(lambda e: e.scenario(codecs.BOM_UTF16_LE + "name: x\n".encode("utf-16-le"))),
        "UTF-16",
        "utf-16 with bom",
    ),
    case(run(lambda e: e.scenario("name: x\n".encode("utf-16-be"))), "NUL", "utf-16 without bom"),
    case(run(lambda e: e.scenario("name: x\n".encode("utf-32"))), "UTF-32", "utf-32"),
    case(
        run(lambda e: e.scenario("name: x\ndescription: caf\xe9\n".encode("latin-1"))),
        "not UTF-8",
        "latin-1",
    ),
    case(run(lambda e: e.scenario("name: x\ndescription: \x1b[31m\n")), "U+001B", "escape char"),
    case(run(lambda e: e.scenario("name: x\n---\nname: y\n")), "more than one", "two documents"),
    case(
        run(lambda e: e.scenario("name: !!python/object/apply:os.getcwd []\n")),
        "constructor",
        "python tag",
    ),
    case(run(lambda e: e.scenario(base_scenario(seeds=3))), "did you mean 'seed'", "unknown key"),
    case(run(lambda e: e.graph(max_turn=3)), "did you mean 'max_turns'", "unknown graph key"),
    case(
        run(lambda e: e.agents(client={"role": "client", "persona": "x", "temp": 1})),
        "agents.client.temp",
        "unknown agent key",
    ),
    case(
        run(
            lambda e: e.agents(
                client={"role": "client", "persona": str(GRIEF_CLIENT), "sampling": {"temp": 1}}
            )
        ),
        "temperature",
        "unknown sampling key",
    ),
    case(
        run(lambda e: e.scenario({k: v for k, v in base_scenario().items() if k != "name"})),
        "missing required key 'name'",
        "missing name",
    ),
    case(run(lambda e: e.scenario(base_scenario(name="my run"))), "'name'", "name with space"),
    case(run(lambda e: e.scenario(base_scenario(agents={}))), "agents", "no agents"),
    case(run(lambda e: e.graph(kind="tournament")), "graph.kind", "unknown graph kind"),
    case(run(lambda e: e.graph(opener="therapist")), "opener", "opener not an agent"),
    case(
        run(lambda e: e.agents(third={"role": "client", "persona": str(GRIEF_CLIENT)})),
        "exactly 2 agents",
        "three agents in a dyad",
    ),
    case(
        run(lambda e: e.agents(client={"role": "therapist", "persona": "x.yaml"})),
        "therapist",
        "unknown role",
    ),
    case(run(lambda e: e.scenario(base_scenario(render="fancy"))), "render", "bad render mode"),
    case(
        run(lambda e: e.scenario(base_scenario(kind="teaching"))),
        "experiment teaching",
        "teaching file given to run",
    ),
    case(
        run(
            lambda e: e.agents(
                client={
                    "role": "client",
                    "persona": str(GRIEF_CLIENT),
                    "sampling": {"temperature": "hot"},
                }
            )
        ),
        "temperature",
        "non-numeric temperature",
    ),
]

PERSONAS = [
    case(
        run(lambda e: e.agents(client={"role": "client", "persona": "ghost.yaml"})),
        "not found",
        "persona missing",
    ),
    case(
        run(lambda e: e.agents(client={"role": "client", "persona": "none/*.yaml"})),
        "no persona files match",
        "persona glob matches nothing",
    ),
    case(run(lambda e: e.client_persona("id: x\n  name: [\n")), "YAML", "persona malformed"),
    case(
        run(lambda e: e.client_persona(GRIEF_TEXT + "name: Someone Else\n")),
        "duplicate key 'name'",
        "persona duplicate key",
    ),
    case(
        run(lambda e: e.client_persona(codecs.BOM_UTF16_LE + GRIEF_TEXT.encode("utf-16-le"))),
        "UTF-16",
        "persona utf-16",
    ),
    case(run(lambda e: e.client_persona("- a list\n")), "mapping", "persona not a mapping"),
    case(
        run(lambda e: e.client_persona(GRIEF_TEXT + "favourite_colour: blue\n")),
        "favourite_colour",
        "persona unknown field",
    ),
    case(
        run(lambda e: e.client_persona(GRIEF_TEXT.replace("age: 70", "age: seventy"))),
        "age",
        "persona bad field value",
    ),
    case(
        run(
            lambda e: e.client_persona(
                GRIEF_TEXT.replace("age: 70", "age: " + "[" * 100 + "]" * 100)
            )
        ),
        "nested",
        "persona deep nesting",
    ),
]

GRIDS_AND_NUMBERS = [
    case(
        run(lambda e: e.scenario(base_scenario(grid={"client.style": ["angry"]}))),
        "style",
        "grid value",
    ),
    case(run(lambda e: e.scenario(base_scenario(grid={"style": ["upset"]}))), "AGENT", "grid key"),
    case(
        run(lambda e: e.scenario(base_scenario(grid={"patient.style": ["upset"]}))),
        "grid",
        "grid unknown agent",
    ),
    case(
        run(lambda e: e.scenario(base_scenario(grid={"client.style": []}))),
        "no values",
        "grid empty",
    ),
    case(run(lambda e: e.graph(max_turns=True)), "graph.max_turns", "max_turns true"),
    case(run(lambda e: e.graph(max_turns=0)), "graph.max_turns", "max_turns zero"),
    case(run(lambda e: e.graph(max_turns="6")), "graph.max_turns", "max_turns text"),
    case(run(lambda e: e.graph(max_turns=10**6)), "graph.max_turns", "max_turns huge"),
    case(run(lambda e: e.scenario(base_scenario(repeats=True))), "repeats", "repeats true"),
    case(run(lambda e: e.scenario(base_scenario(repeats=0))), "repeats", "repeats zero"),
    case(run(lambda e: e.scenario(base_scenario(episodes=0))), "episodes", "episodes zero"),
    case(run(lambda e: e.scenario(base_scenario(seed=2**63))), "seed", "yaml seed 2**63"),
    case(run(lambda e: e.scenario(base_scenario(seed=2**70))), "seed", "yaml seed 2**70"),
    case(run(lambda e: e.scenario(base_scenario(seed=-1))), "seed", "yaml seed negative"),
    case(run(lambda e: e.scenario(base_scenario(seed=True))), "seed", "yaml seed true"),
    case(run(lambda e: e.scenario(base_scenario(seed="abc"))), "seed", "yaml seed text"),
    case(run(lambda e: e.scenario(base_scenario(seed=1.5))), "seed", "yaml seed float"),
]

BACKENDS = [
    case(
        run(lambda e: e.scenario(base_scenario(backend="gpt"))), "unknown backend", "file backend"
    ),
    case(
        run(
            lambda e: e.agents(
                client={"role": "client", "persona": str(GRIEF_CLIENT), "backend": "embeded"}
            )
        ),
        "did you mean 'embedded'",
        "agent backend typo",
    ),
    case(
        run(lambda e: e.scenario(base_scenario(backend_options={"latency_s": "abc"}))),
        "latency_s",
        "backend_options non-numeric",
    ),
    case(
        run(lambda e: e.scenario(base_scenario(backend_options={"latency": 1}))),
        "latency",
        "backend_options unknown",
    ),
    case(
        run(lambda e: e.scenario(base_scenario(backend_options={"fail_rate": 2}))),
        "fail_rate",
        "backend_options out of range",
    ),
    case(run_cbt("--backend", "embeded"), "unknown backend", "--backend typo"),
    case(run_cbt("--backend", "embedded:/nope.gguf"), "GGUF", "--backend missing gguf"),
    case(run_cbt("--backend", "scripted?latency_s=abc"), "latency_s", "latency_s=abc"),
    case(run_cbt("--backend", "embedded?n_parallel=abc"), "n_parallel", "n_parallel=abc"),
    case(
        run_cbt("--backend", "openai:http://127.0.0.1:9/v1?max_concurrency=abc"),
        "max_concurrency",
        "max_concurrency=abc",
    ),
    case(
        run_cbt("--backend", "openai:http://127.0.0.1:9/v1?model=m&timeout_s=0"),
        "timeout_s",
        "timeout_s=0",
    ),
    case(run_cbt("--backend", "scripted?nosuch=1"), "nosuch", "unknown option in spec"),
    case(run_cbt("--backend", "openai"), "base URL", "openai without URL"),
    case(run_cbt("--backend", "openai:127.0.0.1:8000/v1"), "base URL", "openai without scheme"),
    case(
        run_cbt("--backend", "openai:http://127.0.0.1:9/v1"),
        "could not discover",
        "openai server down",
    ),
    case(run_cbt("--backend", "vllm"), "model path", "vllm without path"),
]

RUN_OPTIONS = [
    case(run_cbt("--seed", BIG), "seed", "--seed 2**63"),
    case(run_cbt("--seed", "-1"), "seed", "--seed negative"),
    case(run_cbt("--seed", "abc"), "seed", "--seed text"),
    case(run_cbt("--seed", "1.5"), "seed", "--seed float"),
    case(lambda e: ["run", "--db", str(e.out_db)], "no scenario", "no scenario"),
    case(lambda e: ["run", "--resume", str(e.tmp / "absent.db")], "not found", "--resume missing"),
    case(
        lambda e: ["run", "--resume", str(e.file("notes.txt", "hello\n"))],
        "not a personae",
        "--resume text file",
    ),
    case(
        lambda e: [
            "run",
            "--resume",
            str(
                e.sqlite(
                    "empty_personae.db",
                    "CREATE TABLE meta (key, value)",
                    "INSERT INTO meta VALUES ('app', 'personae'), ('schema_version', '1')",
                )
            ),
        ],
        "tables missing",
        "--resume db without runs",
    ),
]

DATABASES = [
    case(
        lambda e: ["run", "counseling_cbt", "--backend", "scripted", "--db", "{notes}"],
        "not a personae",
        "--db text file",
    ),
    case(
        lambda e: [
            "run",
            "counseling_cbt",
            "--backend",
            "scripted",
            "--db",
            str(e.sqlite("foreign.db", "CREATE TABLE t (x)")),
        ],
        "not a personae",
        "--db foreign sqlite",
    ),
    case(
        lambda e: ["run", "counseling_cbt", "--backend", "scripted", "--db", str(e.tmp)],
        "folder, not a database",
        "--db is a directory",
    ),
    case(
        lambda e: [
            "run",
            "counseling_cbt",
            "--backend",
            "scripted",
            "--db",
            f"{e.file('notes.txt', 'x')}/run.db",
        ],
        "notes.txt",
        "--db under a file",
    ),
    case(
        lambda e: ["run", "counseling_cbt", "--backend", "scripted", "--db", "/proc/personae.db"],
        "/proc",
        "--db in /proc",
    ),
    case(
        lambda e: [
            "run",
            "counseling_cbt",
            "--backend",
            "scripted",
            "--db",
            str(e.file("damaged.db", e.made["run"].read_bytes()[:3000])),
        ],
        "damaged.db",
        "--db truncated personae db",
    ),
    case(
        lambda e: [
            "show",
            str(
                e.personae_db(
                    "version.db", "UPDATE meta SET value = 'two' WHERE key = 'schema_version'"
                )
            ),
        ],
        "schema",
        "non-integer schema_version",
    ),
    case(
        lambda e: [
            "show",
            str(
                e.personae_db(
                    "newer.db", "UPDATE meta SET value = '999' WHERE key = 'schema_version'"
                )
            ),
        ],
        "newer",
        "newer schema_version",
    ),
    case(
        lambda e: [
            "show",
            str(e.personae_db("noturns.db", "DROP TABLE turns")),
        ],
        "noturns.db",
        "db missing a table",
    ),
]

PLAN_SIZE = [
    case(
        run(lambda e: e.scenario(base_scenario(repeats=10**9))),
        "episodes",
        "repeats 1e9",
    ),
    case(
        run(
            lambda e: e.scenario(
                base_scenario(
                    grid={
                        "client.style": ["plain", "upset", "verbose", "reserved", "tangent"] * 40,
                        "counselor.name": [f"n{i}" for i in range(1000)],
                        "client.name": [f"c{i}" for i in range(1000)],
                    }
                )
            )
        ),
        "episodes",
        "grid of 2e8 conditions",
    ),
]

TEACHING_CASES = [
    case(teach(lambda e: str(e.tmp / "absent.yaml")), "not found", "teaching missing"),
    case(teach(lambda e: e.teaching("kind: teaching\nname: [\n")), "YAML", "teaching malformed"),
    case(
        teach(lambda e: e.teaching(yaml.safe_dump(TEACHING) + "name: again\n")),
        "duplicate key 'name'",
        "teaching duplicate key",
    ),
    case(
        teach(lambda e: e.teaching(yaml.safe_dump(TEACHING) + f"backend_options:\n{BOMB}")),
        "alias",
        "teaching alias bomb",
    ),
    case(
        teach(lambda e: e.teaching(codecs.BOM_UTF16_LE + "kind: teaching\n".encode("utf-16-le"))),
        "UTF-16",
        "teaching utf-16",
    ),
    case(teach(lambda e: e.teaching(seeds=[2**63])), "seeds", "teaching seed 2**63"),
    case(teach(lambda e: e.teaching(seeds=[True])), "seeds", "teaching seed true"),
    case(teach(lambda e: e.teaching(seeds=[-3])), "seeds", "teaching seed negative"),
    case(teach(lambda e: e.teaching(seeds=[])), "seeds", "teaching no seeds"),
    case(teach(lambda e: e.teaching(budgets=[1.5])), "budgets", "teaching budget above 1"),
    case(teach(lambda e: e.teaching(budgets=[True])), "budgets", "teaching budget true"),
    case(teach(lambda e: e.teaching(functions=["psychic"])), "psychic", "teaching function"),
    case(teach(lambda e: e.teaching(budget=[0.5])), "budget", "teaching unknown key"),
    case(
        teach(lambda e: e.teaching(data={"items": True, "observe": 0})),
        "data.items",
        "teaching items true",
    ),
    case(
        teach(lambda e: e.teaching(data={"test": "absent.jsonl", "observe": 0})),
        "absent.jsonl",
        "teaching data file missing",
    ),
    case(
        teach(lambda e: e.teaching(student={"role": "teacher", "demos": 0})),
        "not a student role",
        "teaching student role",
    ),
    case(
        teach(lambda e: e.teaching(backend_options={"p_pre": "abc"})),
        "p_pre",
        "teaching backend option",
    ),
    case(
        teach(
            lambda e: e.teaching(
                student={"demos": 0, "persona": str(e.file("p.yaml", "a: 1\na: 2\n"))}
            )
        ),
        "duplicate key 'a'",
        "teaching persona duplicate key",
    ),
    case(teach(lambda e: e.teaching(), "--seeds", "abc"), "--seeds", "--seeds text"),
    case(teach(lambda e: e.teaching(), "--seeds", f"0,{BIG}"), "--seeds", "--seeds 2**63"),
    case(teach(lambda e: e.teaching(), "--seeds", "-1"), "--seeds", "--seeds negative"),
    case(teach(lambda e: e.teaching(), "--plot", "curves.gif"), "--plot", "--plot suffix"),
    case(
        teach(lambda e: e.teaching(), "--backend", "simulated?p_post=x"),
        "p_post",
        "--backend option",
    ),
]

READ_COMMANDS = [
    case(lambda e: ["show", str(e.tmp / "absent.db")], "not found", "show missing db"),
    case(lambda e: ["show", str(e.file("notes.txt", "hi\n"))], "not a personae", "show text"),
    case(lambda e: ["show", str(e.copy("run")), "zzzz"], "no such episode", "show episode"),
    case(export(db=lambda e: e.tmp / "absent.db"), "not found", "export missing db"),
    case(export(db=lambda e: e.file("notes.txt", "hi\n")), "not a personae", "export text file"),
    case(export("-f", "parquet"), "parquet", "export format"),
    case(export("-f", "sft"), "--role", "export sft without role"),
    case(export("-f", "sft", "--role", "teacher"), "teacher", "export unknown role"),
    case(export("--where", "client.mood=sad"), "client.mood", "export bad where"),
    case(export("--where", "nonsense"), "where", "export malformed where"),
    case(export("--status", "done"), "done", "export status"),
    case(export("--scenario", "other"), "other", "export scenario"),
    case(export("--out", "{tmp}/run.db"), "run database", "export --out is the db"),
    case(export("--out", "{tmp}/run.db", "--force"), "run database", "--out db with --force"),
    case(export("--out", "{tmp}/run.db-wal"), "run database", "export --out db-wal"),
    case(export("--out", "{tmp}/run.db-shm", "-f", "csv"), "run database", "export --out shm"),
    case(export("--out", "{tmp}"), "directory", "export --out directory"),
    case(export("--out", "{notes}"), "--force", "export --out existing file"),
    case(export("--out", "/dev/null", "--force"), "regular file", "export --out device"),
    case(export("--out", "{notes}/x.jsonl"), "not a directory", "--out under a file"),
    case(lambda e: ["browse", str(e.tmp / "absent.db")], "not found", "browse missing db"),
    case(lambda e: ["browse", str(e.file("notes.txt", "hi\n"))], "not a personae", "browse"),
    case(lambda e: ["replay", str(e.tmp / "absent.db"), "0"], "not found", "replay missing db"),
    case(lambda e: ["replay", str(e.copy("run")), "zzzz", "--print"], "no such", "replay ep"),
    case(
        lambda e: ["replay", str(e.copy("run")), "0", "--fork-at", "2", "--set", "nobody.x=1"],
        "nobody",
        "fork with bad --set",
    ),
    case(
        lambda e: ["replay", str(e.copy("run")), "0", "--fork-at", BIG],
        "out of range",
        "fork at 2**63",
    ),
    case(lambda e: ["show", str(e.copy("run")), BIG], "no such episode", "show index 2**63"),
    case(
        lambda e: ["replay", str(e.copy("run")), "0", "--fork-at", "2", "--backend", "gpt"],
        "unknown backend",
        "fork with unknown backend",
    ),
]

CASES = [
    *SCENARIO_FILES,
    *PERSONAS,
    *GRIDS_AND_NUMBERS,
    *BACKENDS,
    *RUN_OPTIONS,
    *DATABASES,
    *TEACHING_CASES,
    *READ_COMMANDS,
]


def _expand(argv: list[str], env: Env) -> list[str]:
    notes = env.tmp / "notes.txt"
    if any("{notes}" in a for a in argv):
        notes.write_text("not a database\n")
    return [a.replace("{notes}", str(notes)) for a in argv]


def _check(code: int, out: str, err: str, expected: str) -> None:
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    assert expected.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in out + err
    assert "database:" not in out  # no run started


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    build: Build,
    expected: str,
    made: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = Env(tmp_path, made)
    monkeypatch.chdir(tmp_path)  # a default logs/ folder would land here and be seen
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    argv = _expand(build(env), env)
    before = tree_snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    code = info.value.code
    _check(code if isinstance(code, int) else 1, captured.out, captured.err, expected)
    assert tree_snapshot(tmp_path) == before


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    limit = 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize(("build", "expected"), PLAN_SIZE)
def test_oversized_plans_are_refused_up_front(
    build: Build, expected: str, made: dict[str, Path], tmp_path: Path
) -> None:
    # in a child process with a memory cap and a timeout: today these hang while memory grows
    env = Env(tmp_path, made)
    argv = build(env)
    before = tree_snapshot(tmp_path)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "personae", *argv],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=15,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("no answer within 15 s")
    _check(proc.returncode, proc.stdout, proc.stderr, expected)
    assert tree_snapshot(tmp_path) == before
