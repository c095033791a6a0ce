"""The `personae` command line (`run | show | scenarios | replay | judge | export | browse |
experiment`)."""

from personae.cli import _experiment, _export, _judge, _replay  # noqa: F401 - their commands
from personae.cli._app import app, main

__all__ = ["app", "main"]
