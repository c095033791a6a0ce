"""The `personae` command line (`run | show | scenarios | replay | judge | export | browse |
experiment | analyze | merge`)."""

from personae.cli import (  # noqa: F401 - registers the commands
    _analyze,
    _candidates,
    _computer_use,
    _experiment,
    _export,
    _judge,
    _replay,
    _scale,
)
from personae.cli._app import app, main

__all__ = ["app", "main"]
