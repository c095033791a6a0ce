"""Analysis of run databases: DataFrames of every table, and the discussion study's analysis.

`frames(db)` gives the turn log as pandas DataFrames (`runs`, `episodes`, `turns`, `calls`,
`judgments`, `interventions`), read when first used. `analyze_discussion(db)` computes the
facilitated-discussion study's tables (per-strategy toxicity and argument quality, participation,
diversity and its divergence from human conversations, a mixed-effects regression, annotator
agreement, one row per comment x annotator); `save_analysis` writes them as CSV and Parquet with
the figures as PNG and PDF (`personae analyze discussion DB`). `analyze_computer_use(db)`
computes the computer-use experiment's BGD and completion rates per pattern and prompting
condition with bootstrap intervals, and the judge's agreement with the state checks and with
people's labels (`personae experiment computer-use report DB`).
"""

from personae.analysis._computer_use import (
    ComputerUseReport,
    analyze_computer_use,
)
from personae.analysis._computer_use_plot import computer_use_figure, save_computer_use_plot
from personae.analysis._discussion import (
    STRATEGIES,
    DiscussionAnalysis,
    analyze_discussion,
    strategy_order,
)
from personae.analysis._frames import TABLES, Frames, frames
from personae.analysis._measures import (
    agreement,
    diversity,
    gini,
    jensen_shannon,
    krippendorff_alpha,
)
from personae.analysis._reference import ReferenceConversation, load_reference
from personae.analysis._save import TABLE_NAMES, save_analysis

__all__ = [
    "STRATEGIES",
    "TABLES",
    "TABLE_NAMES",
    "ComputerUseReport",
    "DiscussionAnalysis",
    "Frames",
    "ReferenceConversation",
    "agreement",
    "analyze_computer_use",
    "analyze_discussion",
    "computer_use_figure",
    "diversity",
    "frames",
    "gini",
    "jensen_shannon",
    "krippendorff_alpha",
    "load_reference",
    "save_analysis",
    "save_computer_use_plot",
    "strategy_order",
]
