"""The `personae` command line (`run | show | scenarios | replay | judge | export | browse |
experiment | merge`)."""

from personae.cli import _experiment, _export, _judge, _replay, _scale  # noqa: F401 - commands
from personae.cli._app import app, main

__all__ = ["app", "main"]
