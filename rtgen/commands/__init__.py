"""Subcommands of the ``rtgen`` CLI, one module each (see :mod:`rtgen.cli`)."""
