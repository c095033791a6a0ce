"""The `personae` command line (`run | show | scenarios | replay | judge | export | browse |
experiment | analyze | merge | train | ccd`)."""

from personae.cli import (  # noqa: F401 - registers the commands
    _analyze,
    _candidates,
    _computer_use,
    _experiment,
    _export,
    _judge,
    _replay,
    _scale,
    _train,
)
from personae.cli._app import app, main

__all__ = ["app", "main"]
