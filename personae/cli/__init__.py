"""The `personae` command line (`run | show | scenarios | replay | judge | export | browse |
experiment | analyze`)."""

from personae.cli import _candidates, _experiment, _export, _judge, _replay  # noqa: F401
from personae.cli._app import app, main

__all__ = ["app", "main"]
