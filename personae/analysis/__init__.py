"""Analysis of run databases.

`frames(db)` gives the turn log as pandas DataFrames (`runs`, `episodes`, `turns`, `calls`,
`judgments`, `interventions`), read when first used.
"""

from personae.analysis._frames import TABLES, Frames, frames

__all__ = ["TABLES", "Frames", "frames"]
