"""Runs: the trainer, the starting model and SFT, scoring, evaluation, the demo."""
