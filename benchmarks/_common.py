"""Shared helpers for the benchmarks: a small scenario, a results table, JSON output."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def write_scenario(
    folder: Path, *, repeats: int, max_turns: int, backend: str, max_tokens: int = 48
) -> Path:
    """A counseling scenario with `repeats` episodes of `max_turns` lines."""
    personas = ROOT / "scenarios" / "personas"
    sampling = {
        "temperature": 0.8,
        "max_tokens": max_tokens,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
    }
    spec = {
        "name": "bench",
        "graph": {
            "kind": "dyadic",
            "opener": "counselor",
            "max_turns": max_turns,
            "end_on_farewell": False,
        },
        "backend": backend,
        "seed": 1,
        "repeats": repeats,
        "agents": {
            "counselor": {
                "role": "counselor",
                "persona": str(personas / "counselors/cbt.yaml"),
                "sampling": sampling,
            },
            "client": {
                "role": "client",
                "persona": str(personas / "clients/hannah_new_parent.yaml"),
                "sampling": sampling,
            },
        },
    }
    path = folder / f"bench-{repeats}-{max_turns}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def report(
    name: str,
    title: str,
    columns: list[str],
    rows: list[dict[str, Any]],
    notes: dict[str, Any] | None = None,
) -> Path:
    """Print `rows` as a table and save them (with machine facts) as JSON."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="right" if col != columns[0] else "left")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    console = Console()
    console.print(table)
    for key, value in (notes or {}).items():
        console.print(f"{key}: {_fmt(value)}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": name,
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {
                    "cpu_count": _cpus(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "rows": rows,
                "notes": notes or {},
            },
            indent=2,
        )
    )
    console.print(f"saved {out.relative_to(ROOT)}")
    return out


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return "" if value is None else str(value)
