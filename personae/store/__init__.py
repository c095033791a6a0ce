"""The SQLite turn log: schema, the single batched writer, the run lock, and readers.

Every turn of every episode is stored (`turns`), with the model call behind it (`llm_calls`),
grouped by `episodes` and `runs`. Databases carry a schema version; readers refuse newer ones.
One run at a time writes a database (`RunLock`), through one `TurnLogWriter`, which either saves
every queued row in order or stops with a `StoreFailure` saying what was not saved.
`merge_databases` puts the databases of a plan's shards together again. `import_labels` adds
people's labels of episodes from a CSV file (`human_labels`).
"""

from personae.store._failures import StoreFailure
from personae.store._human import HumanLabel, LabelImport, import_labels, read_labels
from personae.store._lock import RunLock
from personae.store._merge import Conflict, MergeReport, ShardMerge, merge_databases
from personae.store._reader import RunLog, Turn
from personae.store._schema import (
    SCHEMA_VERSION,
    check_database,
    episode_key,
    open_database,
)
from personae.store._writer import TurnLogWriter

__all__ = [
    "SCHEMA_VERSION",
    "Conflict",
    "HumanLabel",
    "LabelImport",
    "MergeReport",
    "RunLock",
    "RunLog",
    "ShardMerge",
    "StoreFailure",
    "Turn",
    "TurnLogWriter",
    "check_database",
    "episode_key",
    "import_labels",
    "merge_databases",
    "open_database",
    "read_labels",
]
