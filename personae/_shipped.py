"""Where the shipped scenarios and their data files live (a repo checkout or an installed wheel)."""

from __future__ import annotations

from pathlib import Path


def scenarios_dir() -> Path:
    """The folder of shipped scenario files (repo checkout or installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "scenarios", here / "_shipped_scenarios"):
        if candidate.is_dir():
            return candidate
    return here.parent / "scenarios"
