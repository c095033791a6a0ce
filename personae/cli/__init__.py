"""The `personae` command line (`personae run | show | scenarios | replay | export | browse`)."""

from personae.cli import _experiment, _export, _replay  # noqa: F401 - register their commands
from personae.cli._app import app, main

__all__ = ["app", "main"]
