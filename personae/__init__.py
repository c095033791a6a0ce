"""personae: multi-agent role-play simulations with LLMs.

LangGraph graphs wire role-playing agents around one shared inference backend, and every turn is
stored in SQLite. Start with `personae.run("counseling_cbt", episodes=2)`.
"""

import personae.replay  # noqa: F401 - registers the 'replay' backend kind
from personae._version import __version__
from personae.analysis import Frames, frames
from personae.errors import UserError
from personae.runner import RunResult, arun, run
from personae.scenario import Scenario, load_scenario, plan_episodes
from personae.store import RunLog

__all__ = [
    "Frames",
    "RunLog",
    "RunResult",
    "Scenario",
    "UserError",
    "__version__",
    "arun",
    "frames",
    "load_scenario",
    "plan_episodes",
    "run",
]
