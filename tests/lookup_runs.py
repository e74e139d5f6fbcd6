"""Real lookup runs for the tests: the trainer on configs/lookup.yaml, in this process."""

from pathlib import Path

from rl.config import load_config
from rl.run.trainer import Trainer

LOOKUP = Path(__file__).resolve().parents[1] / "configs" / "lookup.yaml"


def train_lookup(run_dir, *overrides: str) -> Trainer:
    """Train the lookup task into `run_dir` with these overrides; the trainer, closed, for its step and run_dir."""
    trainer = Trainer(load_config(LOOKUP, [f"run_dir={run_dir}", *overrides]))
    try:
        trainer.train(progress=False)
    finally:
        trainer.close()
    return trainer
