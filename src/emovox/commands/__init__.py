"""Subcommands of the ``emovox`` CLI (see :mod:`emovox.cli`)."""
