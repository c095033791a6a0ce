"""The `personae` command line (`personae run | show | scenarios`)."""

from personae.cli._app import app, main

__all__ = ["app", "main"]
