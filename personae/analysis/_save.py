"""Writing a discussion analysis into a folder: every table as CSV, the ratings also as Parquet,
the regression summary and the notes as text, and the figures as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

from personae.analysis._discussion import DiscussionAnalysis
from personae.analysis._plots import save_figures
from personae.errors import UserError

#: The tables written as `NAME.csv`, in the order a reader wants them.
TABLE_NAMES = (
    "strategies",
    "participation",
    "intents",
    "trolls",
    "diversity",
    "agreement",
    "regression",
    "toxicity_by_turn",
    "discussions",
    "participants",
    "ratings",
    "reference",
)


def check_folder(folder: Path) -> None:
    """Raise `UserError` if `folder` cannot hold the analysis (it is a file, or under one)."""
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise UserError(
                "not a folder" if part == folder else f"{part} is a file, not a folder",
                where=str(folder),
                fix="pass --out a folder (it is created if missing)",
            )


def save_analysis(analysis: DiscussionAnalysis, folder: str | Path) -> list[Path]:
    """Write every table, the summary, the notes and the figures into `folder` (created if
    missing; files of an earlier analysis there are replaced); return the paths written.

    Raises:
        UserError: `folder` is a file or cannot be created.
    """
    folder = Path(folder)
    check_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the folder ({exc.strerror})",
            where=str(folder),
            fix="pass --out a folder that can be written",
        ) from exc
    written: list[Path] = []
    for name in TABLE_NAMES:
        if name == "reference" and analysis.reference_path is None:
            continue
        path = folder / f"{name}.csv"
        getattr(analysis, name).to_csv(path, index=False)
        written.append(path)
    parquet = folder / "ratings.parquet"
    analysis.ratings.to_parquet(parquet, index=False)
    written.append(parquet)
    summary = folder / "regression.txt"
    summary.write_text(
        analysis.regression_summary or "not fitted: see notes.txt\n", encoding="utf-8"
    )
    notes = folder / "notes.txt"
    notes.write_text("".join(f"{n}\n" for n in analysis.notes), encoding="utf-8")
    written += [summary, notes]
    written += save_figures(analysis, folder)
    return written
