"""Maintainer tools (not part of the installed package): run from the repository root as ``python -m tools.X``."""
