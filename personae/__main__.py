"""`python -m personae` is the `personae` command."""

from personae.cli import main

main()
