"""Viewing runs: plots and the `rl view` page."""
